"""Masking statistics match their definitions under a seeded generator."""

from __future__ import annotations

import pytest
import torch

from onetower.data import block_mask, keep_ids_from_mask, mask_tokens, random_patch_mask
from onetower.data.masking import _select_words, sample_mask_ratios

SPECIALS = torch.tensor([0, 1, 2, 3, 4])  # pad, unk, cls, sep, mask
MASK_ID = 4


def _text_batch(b=512, t=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, t + 1, (b,), generator=g)
    ids = torch.randint(5, 100, (b, t), generator=g)
    pos = torch.arange(t).expand(b, t)
    ids[:, 0] = 2
    ids = torch.where(pos == (lengths - 1)[:, None], 3, ids)
    ids = torch.where(pos >= lengths[:, None], 0, ids)
    special = torch.isin(ids, SPECIALS)
    return ids, special


def test_bert_80_10_10_and_never_special():
    ids, special = _text_batch()
    out = mask_tokens(
        ids.clone(),
        special,
        torch.Generator().manual_seed(1),
        MASK_ID,
        torch.arange(5, 100),
        probability=0.15,
    )
    selected = out.labels != -100
    assert not (selected & special).any()
    assert torch.equal(out.labels[selected], ids[selected])
    assert torch.equal(out.input_ids[~selected], ids[~selected])
    rate = selected.sum() / (~special).sum()
    assert abs(rate - 0.15) < 0.01
    n = selected.sum()
    masked = (out.input_ids == MASK_ID) & selected
    changed = (out.input_ids != ids) & ~masked
    kept = selected & (out.input_ids == ids)
    assert abs(masked.sum() / n - 0.8) < 0.03
    # Random replacements that happen to equal the original count as "kept": expected tiny.
    assert abs(changed.sum() / n - 0.1) < 0.03 and abs(kept.sum() / n - 0.1) < 0.03
    assert not torch.isin(out.input_ids[changed], SPECIALS).any()


def test_token_masking_is_a_function_of_the_generator():
    ids, special = _text_batch(16, 12)
    run = [
        mask_tokens(ids, special, torch.Generator().manual_seed(s), MASK_ID, torch.arange(5, 100))
        for s in (7, 7, 8)
    ]
    assert torch.equal(run[0].input_ids, run[1].input_ids)
    assert torch.equal(run[0].labels, run[1].labels)
    assert not torch.equal(run[0].labels, run[2].labels)


def test_whole_word_masking_selects_words_atomically():
    ids, special = _text_batch(256, 24)
    # Words of 1-3 tokens: word id changes every few positions, -1 on specials.
    g = torch.Generator().manual_seed(3)
    starts = torch.rand(ids.shape, generator=g) < 0.5
    word_ids = starts.long().cumsum(1).masked_fill(special, -1)
    out = mask_tokens(
        ids,
        special,
        torch.Generator().manual_seed(4),
        MASK_ID,
        torch.arange(5, 100),
        probability=0.3,
        word_ids=word_ids,
    )
    selected = out.labels != -100
    assert not (selected & special).any()
    words = 0
    for row in range(ids.shape[0]):
        for w in word_ids[row].unique():
            if w < 0:
                continue
            sel = selected[row][word_ids[row] == w]
            assert sel.all() or not sel.any()
            words += 1
    word_rate = (
        sum(
            selected[r][word_ids[r] == w].any().item()
            for r in range(ids.shape[0])
            for w in word_ids[r].unique()
            if w >= 0
        )
        / words
    )
    assert abs(word_rate - 0.3) < 0.03


def test_select_words_per_row_from_first_token_draws():
    """Word ids restart in every row (as word_ids() do); a word is selected by its first
    token's draw, and -1 tokens (special / padding) never are, whatever their draw."""
    word_ids = torch.tensor(
        [
            [-1, 0, 0, 0, 1, 2, 2, -1, -1],
            [-1, 0, 0, 0, 1, 2, 2, -1, -1],  # the same words as row 0, other draws
            [-1, 0, 1, 1, 1, 1, 1, 1, -1],  # a long word right after a one-token word
            [0, 0, 1, -1, -1, -1, -1, -1, -1],  # no leading special: the row starts a word
        ]
    )
    lo, hi = 0.0, 0.9  # below / above probability 0.5
    draw = torch.full(word_ids.shape, hi)
    draw[word_ids < 0] = lo  # specials and padding draw "select": must still not be
    draw[0, 1], draw[0, 5] = lo, lo  # row 0: words 0 and 2
    draw[1, 2], draw[1, 4] = lo, lo  # row 1: word 0's second token (ignored), word 1
    draw[2, 2] = lo  # row 2: word 1 (the long one)
    draw[3, 0] = lo  # row 3: word 0
    expected = torch.tensor(
        [
            [0, 1, 1, 1, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 1, 1, 1, 0],
            [1, 1, 0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(_select_words(word_ids, draw, 0.5), expected)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.75])
def test_random_patch_mask_exact_counts(ratio):
    m = random_patch_mask(64, 16, ratio, torch.Generator().manual_seed(0))
    assert m.bool_masked_pos.shape == (64, 16)
    assert (m.bool_masked_pos.sum(1) == round(ratio * 16)).all()
    assert m.keep_ids.shape == (64, 16 - round(ratio * 16)) and (m.keep_ids >= 0).all()
    for row, keep in zip(m.bool_masked_pos, m.keep_ids, strict=True):
        assert torch.equal(keep, (~row).nonzero().flatten())  # ascending, visible only


def test_random_patch_mask_uniform_over_positions():
    m = random_patch_mask(4000, 16, 0.5, torch.Generator().manual_seed(1))
    freq = m.bool_masked_pos.float().mean(0)
    assert (freq - 0.5).abs().max() < 0.04


def test_per_sample_ratios_pad_keep_ids():
    g = torch.Generator().manual_seed(2)
    ratios = sample_mask_ratios(32, 0.2, 0.9, g)
    m = random_patch_mask(32, 64, ratios, g)
    counts = m.bool_masked_pos.sum(1)
    assert torch.equal(counts, (ratios * 64).round().long())
    kept = (m.keep_ids >= 0).sum(1)
    assert torch.equal(kept, 64 - counts) and m.keep_ids.shape[1] == int(kept.max())
    assert (m.keep_ids == -1).any()
    for row, keep in zip(m.bool_masked_pos, m.keep_ids, strict=True):
        assert torch.equal(keep[keep >= 0], (~row).nonzero().flatten())
        assert (keep[(keep >= 0).sum() :] == -1).all()  # padding only at the end


def _components(mask2d):
    seen, sizes = set(), []
    h, w = mask2d.shape
    for i in range(h):
        for j in range(w):
            if mask2d[i, j] and (i, j) not in seen:
                stack, size = [(i, j)], 0
                seen.add((i, j))
                while stack:
                    y, x = stack.pop()
                    size += 1
                    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        ny, nx = y + dy, x + dx
                        if 0 <= ny < h and 0 <= nx < w and mask2d[ny, nx] and (ny, nx) not in seen:
                            seen.add((ny, nx))
                            stack.append((ny, nx))
                sizes.append(size)
    return sizes


def test_block_mask_beit_flava_setting():
    """FLAVA/BEiT: 75 of 14x14 patches in blocks of >= 16 patches, aspect in [0.3, 1/0.3]."""
    g = torch.Generator().manual_seed(0)
    m = block_mask(64, (14, 14), 75, g, min_num_patches=16)
    counts = m.bool_masked_pos.sum(1).float()
    assert (counts <= 75).all() and counts.mean() > 0.9 * 75
    rand = random_patch_mask(64, 196, 75 / 196, g)
    block_parts = [len(_components(r.view(14, 14))) for r in m.bool_masked_pos]
    rand_parts = [len(_components(r.view(14, 14))) for r in rand.bool_masked_pos]
    # Blocks: few large pieces (<= 75/16 + a couple of small tail blocks) vs scattered patches.
    assert sum(block_parts) / 64 <= 75 / 16 + 2 < sum(rand_parts) / 64
    largest = [max(_components(r.view(14, 14))) for r in m.bool_masked_pos]
    assert min(largest) >= 12  # a 16-patch block can round down to 3x4
    for row, keep in zip(m.bool_masked_pos, m.keep_ids, strict=True):
        assert torch.equal(keep[keep >= 0], (~row).nonzero().flatten())
    again = block_mask(64, (14, 14), 75, torch.Generator().manual_seed(0), min_num_patches=16)
    assert torch.equal(again.bool_masked_pos, m.bool_masked_pos)


def test_keep_ids_from_mask_reference():
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    assert keep_ids_from_mask(mask).tolist() == [[1, 3, -1], [0, 1, 2]]
