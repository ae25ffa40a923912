"""Step-level masking: deterministic per (seed, step, rank), never special or padding tokens,
whole words from WordPiece continuation pieces."""

from __future__ import annotations

import torch

from onetower.data import keys
from onetower.data.batch_masking import BatchMasker, step_generator
from onetower.data.collators import PatchMasking, TextMasking


def batch_of(tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return {
        keys.INPUT_IDS: enc["input_ids"],
        keys.ATTENTION_MASK: enc["attention_mask"],
        keys.PIXEL_VALUES: torch.zeros(len(texts), 3, 32, 32),
    }


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


def test_whole_word_ids_follow_wordpiece_pieces(tokenizer) -> None:
    masker = BatchMasker(tokenizer, TextMasking(whole_word=True))
    ids = tokenizer(["everywhere red"], return_tensors="pt")["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids[0])
    special = masker.special[ids]
    words = masker.word_ids(ids, special)[0].tolist()
    expected, w = [], -1
    for p in pieces:
        if p in tokenizer.all_special_tokens:
            expected.append(-1)
            continue
        w += 0 if p.startswith("##") else 1
        expected.append(w)
    assert len(pieces) > 4 and words == expected and max(words) == 1  # 2 words, many pieces


def test_sharded_masks_equal_the_global_batch_masks(tokenizer) -> None:
    """Two processes masking their halves == one process masking the whole batch."""
    masker = BatchMasker(
        tokenizer, TextMasking(probability=0.4, whole_word=True), PatchMasking((4, 4), 0.5)
    )
    texts = [f"a small {c} circle left of a blue square" for c in ("red", "green", "yellow")] * 2
    enc = tokenizer(texts, padding="max_length", max_length=20, return_tensors="pt")
    full = {
        keys.INPUT_IDS: enc["input_ids"],
        keys.ATTENTION_MASK: enc["attention_mask"],
        keys.PIXEL_VALUES: torch.zeros(6, 3, 32, 32),
    }
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
