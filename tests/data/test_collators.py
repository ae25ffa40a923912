"""Collators: keys and shapes of the batch contract, word ids, determinism with workers."""

from __future__ import annotations

import torch

from onetower.data import (
    ImageCollator,
    PairCollator,
    PatchMasking,
    TextCollator,
    TextMasking,
    build_dataset,
    build_image_transform,
    keys,
    load_pairs,
)
from onetower.data.batch_masking import BatchMasker, step_generator


def _samples(n=6, size=32):
    g = torch.Generator().manual_seed(0)
    texts = [
        "a small red circle left of a large blue square",
        "a green diamond",
        "zebras quickly jumped over the purple triangle",
    ] * 2
    return [
        {
            "text": texts[i % len(texts)],
            "pixel_values": torch.randn(3, size, size, generator=g),
            "image_id": i,
        }
        for i in range(n)
    ]


def test_pair_batch_contract(tokenizer):
    batch = PairCollator(tokenizer, 16)(_samples())
    assert set(batch) == {
        keys.INPUT_IDS,
        keys.ATTENTION_MASK,
        keys.WORD_IDS,
        keys.PIXEL_VALUES,
        keys.IMAGE_IDS,
    }
    b, t = batch[keys.INPUT_IDS].shape
    assert b == 6 and t <= 16
    assert (batch[keys.INPUT_IDS][:, 0] == tokenizer.cls_token_id).all()
    assert batch[keys.ATTENTION_MASK].dtype == torch.long
    assert torch.equal(
        batch[keys.INPUT_IDS] == tokenizer.pad_token_id, batch[keys.ATTENTION_MASK] == 0
    )
    assert batch[keys.PIXEL_VALUES].shape == (6, 3, 32, 32)
    assert batch[keys.IMAGE_IDS].tolist() == list(range(6))
    # The masking keys the training loop adds to this batch.
    masker = BatchMasker(tokenizer, TextMasking(whole_word=True), PatchMasking((4, 4), 0.75))
    masked = masker(batch, step_generator(1, 0))
    assert masked[keys.MIM_MASK].shape == (6, 16) and masked[keys.MIM_MASK].dtype == torch.bool
    assert masked[keys.IMAGE_KEEP_IDS].shape == (6, 4)
    labels = masked[keys.MLM_LABELS]
    assert (labels[batch[keys.ATTENTION_MASK] == 0] == -100).all()
    assert (labels[:, 0] == -100).all()


def test_word_ids_are_the_tokenizers(tokenizer):
    """``word_ids`` long `(B, T)`: the fast tokenizer's word_ids(), -1 on special / padding,
    in text-only and paired batches alike (truncation included). An unknown word ([UNK])
    keeps its word id: it is a word of the text (BatchMasker never selects [UNK])."""
    texts = [s["text"] for s in _samples()]
    for collate in (TextCollator(tokenizer, 12), PairCollator(tokenizer, 12)):
        batch = collate(_samples())
        enc = tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=12,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        expected = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(6)]
        assert batch[keys.WORD_IDS].dtype == torch.long
        assert batch[keys.WORD_IDS].tolist() == expected
        added = enc["special_tokens_mask"].bool() | ~enc["attention_mask"].bool()
        assert torch.equal(batch[keys.WORD_IDS] == -1, added)
        assert (batch[keys.INPUT_IDS] == tokenizer.unk_token_id).any()  # "zebras": z unknown


def test_same_seed_same_batches_with_workers(world, tokenizer, cache_dir):
    src = load_pairs(world.pairs_dir, cache_dir=cache_dir)
    ds = build_dataset(src, build_image_transform(32, train=True), seed=0)

    def run(seed):
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=8,
            shuffle=True,
            num_workers=2,
            collate_fn=PairCollator(tokenizer, 24),
            generator=torch.Generator().manual_seed(seed),
        )
        return list(loader)

    a, b, c = run(0), run(0), run(1)
    for x, y in zip(a, b, strict=True):
        for k in x:
            assert torch.equal(x[k], y[k]), k
    assert not torch.equal(a[0][keys.IMAGE_IDS], c[0][keys.IMAGE_IDS])


def test_text_only_and_image_only_keys(tokenizer):
    text = TextCollator(tokenizer, 8, pad_to_max_length=True)(_samples())
    assert set(text) == {keys.INPUT_IDS, keys.ATTENTION_MASK, keys.WORD_IDS}
    assert text[keys.INPUT_IDS].shape == text[keys.WORD_IDS].shape == (6, 8)
    image = ImageCollator()(_samples())
    assert set(image) == {keys.PIXEL_VALUES, keys.IMAGE_IDS}
    # Per-sample mask ratios and block masking, as the training loop's masker draws them.
    ratios = BatchMasker(tokenizer, patch=PatchMasking((4, 4), ratio_range=(0.25, 0.75)))
    masked = ratios(image, step_generator(0, 0))
    assert set(masked) == set(image) | {keys.MIM_MASK, keys.IMAGE_KEEP_IDS}
    kept = (masked[keys.IMAGE_KEEP_IDS] >= 0).sum(1)
    assert torch.equal(kept, (~masked[keys.MIM_MASK]).sum(1))
    block = BatchMasker(tokenizer, patch=PatchMasking((8, 8), 0.4, block=True))
    assert (block(image, step_generator(0, 0))[keys.MIM_MASK].sum(1) <= round(0.4 * 64)).all()


def test_skipped_samples_are_dropped(tokenizer):
    samples = _samples(3)
    batch = PairCollator(tokenizer, 16)([samples[0], None, samples[2]])
    assert batch[keys.IMAGE_IDS].tolist() == [0, 2]
    assert PairCollator(tokenizer, 16)([None]) == {}
