"""Step-level masking: deterministic per (seed, step, rank), never special or padding tokens,
whole words from the batch's word ids (other tokenizers: test_whole_word_masking.py)."""

from __future__ import annotations

import pytest
import torch

from onetower.data import ImageCollator, PatchMasking, TextCollator, TextMasking, keys
from onetower.data.batch_masking import BatchMasker, step_generator


def batch_of(tokenizer, texts, max_length=None):
    """A collated text batch (padded to ``max_length`` if given) with zero images."""
    collate = TextCollator(tokenizer, max_length or 32, pad_to_max_length=max_length is not None)
    batch = collate([{"text": t} for t in texts])
    batch[keys.PIXEL_VALUES] = torch.zeros(len(texts), 3, 32, 32)
    return batch


def test_same_step_same_masks_other_step_other_masks(tokenizer) -> None:
    masker = BatchMasker(tokenizer, TextMasking(probability=0.3), PatchMasking((4, 4), 0.5))
    batch = batch_of(tokenizer, ["a small red circle left of a blue square"] * 8)
    a = masker(batch, step_generator(0, 5))
    b = masker(batch, step_generator(0, 5))
    c = masker(batch, step_generator(0, 6))
    d = masker(batch, step_generator(0, 5, rank=1))
    for key in (keys.MLM_INPUT_IDS, keys.MLM_LABELS, keys.MIM_MASK, keys.IMAGE_KEEP_IDS):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a[keys.MLM_LABELS], c[keys.MLM_LABELS])
    assert not torch.equal(a[keys.MIM_MASK], d[keys.MIM_MASK])
    assert a[keys.IMAGE_KEEP_IDS].shape == (8, 8) and a[keys.MIM_MASK].sum(1).eq(8).all()
    assert keys.MLM_LABELS not in batch  # the input batch is not modified


def test_never_masks_special_or_padding(tokenizer) -> None:
    masker = BatchMasker(
        tokenizer, TextMasking(probability=1.0, mask_replace=1.0, random_replace=0.0)
    )
    batch = batch_of(tokenizer, ["red", "a small red circle left of a blue square"])
    out = masker(batch, step_generator(1, 1))
    special = torch.isin(batch[keys.INPUT_IDS], torch.tensor(tokenizer.all_special_ids))
    selected = out[keys.MLM_LABELS] != -100
    assert not (selected & special).any()
    assert not (selected & (batch[keys.ATTENTION_MASK] == 0)).any()
    assert selected.eq(~special).all()  # probability 1: every real token
    assert (out[keys.MLM_INPUT_IDS][selected] == tokenizer.mask_token_id).all()


def test_whole_words_of_the_project_tokenizer(tokenizer) -> None:
    """Unknown words split into characters; their pieces are masked together."""
    masker = BatchMasker(tokenizer, TextMasking(probability=0.5, whole_word=True))
    batch = batch_of(tokenizer, ["quickly jumped over", "everywhere red"])
    words = batch[keys.WORD_IDS]
    assert (words[0] == 0).sum() > 2 and words[0].max() == 2 and words[1].max() == 1
    assert not (batch[keys.INPUT_IDS] == tokenizer.unk_token_id).any()
    multi = 0
    for step in range(20):
        selected = masker(batch, step_generator(0, step))[keys.MLM_LABELS] != -100
        assert not (selected & (words < 0)).any()
        for row, w in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1)):
            sel = selected[row][words[row] == w]
            assert sel.all() or not sel.any()
            multi += int(sel.all() and len(sel) > 1)
    assert multi > 0


def test_whole_word_masking_needs_the_word_ids_key(tokenizer) -> None:
    batch = batch_of(tokenizer, ["a small red circle"])
    del batch[keys.WORD_IDS]
    with pytest.raises(ValueError, match=keys.WORD_IDS):
        BatchMasker(tokenizer, TextMasking(whole_word=True))(batch, step_generator(0, 0))
    # Token-level masking does not need words; an image-only batch has no text to mask.
    assert keys.MLM_LABELS in BatchMasker(tokenizer, TextMasking())(batch, step_generator(0, 0))
    images = ImageCollator()([{"pixel_values": torch.zeros(3, 32, 32), "image_id": 0}])
    masker = BatchMasker(tokenizer, TextMasking(whole_word=True), PatchMasking((4, 4)))
    assert set(masker(images, step_generator(0, 0))) == {
        keys.PIXEL_VALUES,
        keys.IMAGE_IDS,
        keys.MIM_MASK,
        keys.IMAGE_KEEP_IDS,
    }


def test_sharded_masks_equal_the_global_batch_masks(tokenizer) -> None:
    """Two processes masking their halves == one process masking the whole batch."""
    masker = BatchMasker(
        tokenizer, TextMasking(probability=0.4, whole_word=True), PatchMasking((4, 4), 0.5)
    )
    texts = [f"a small {c} circle left of a blue square" for c in ("red", "green", "yellow")] * 2
    full = batch_of(tokenizer, texts, max_length=20)
    whole = masker(full, step_generator(0, 3))
    for rank in range(2):
        part = {k: v[rank * 3 : (rank + 1) * 3] for k, v in full.items()}
        mine = masker(part, step_generator(0, 3), rank=rank, world_size=2)
        for key in (keys.MLM_INPUT_IDS, keys.MLM_LABELS, keys.MIM_MASK, keys.IMAGE_KEEP_IDS):
            assert torch.equal(mine[key], whole[key][rank * 3 : (rank + 1) * 3]), key


def test_drop_text_keeps_cls_and_unselected_real_tokens(tokenizer) -> None:
    masker = BatchMasker(tokenizer, TextMasking(probability=0.75), drop_text=True)
    batch = batch_of(tokenizer, ["a small red circle left of a blue square", "red"])
    out = masker(batch, step_generator(2, 0))
    keep, labels = out[keys.TEXT_KEEP_IDS], out[keys.MLM_LABELS]
    real = batch[keys.ATTENTION_MASK].bool()
    for b in range(2):
        kept = [t for t in keep[b].tolist() if t >= 0]
        expected = [t for t in range(real.shape[1]) if real[b, t] and labels[b, t] == -100]
        assert kept == expected and kept[0] == 0  # ascending, [CLS] first, no padding
