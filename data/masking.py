"""Masking as pure functions of their inputs and a ``torch.Generator``.

Token masking is written here rather than taken from transformers'
``DataCollatorForLanguageModeling`` because that collator keeps its own RNG (no generator
argument), draws random replacements from the whole vocabulary including special tokens, and
does whole-word masking in a per-row Python loop; this version is the same BERT 80/10/10
algorithm, vectorised, with word boundaries from the fast tokenizer's ``word_ids``.
``TextMasking`` / ``PatchMasking`` hold the settings ``BatchMasker`` applies them with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class MaskedTokens:
    """``input_ids`` long `(B, T)` corrupted text; ``labels`` long `(B, T)`, -100 = not masked."""

    input_ids: torch.Tensor
    labels: torch.Tensor


@dataclass
class PatchMask:
    """``bool_masked_pos`` bool `(B, N)` True = masked; ``keep_ids`` long `(B, Nk)`, -1 = pad."""

    bool_masked_pos: torch.Tensor
    keep_ids: torch.Tensor


def _select_words(word_ids: torch.Tensor, draw: torch.Tensor, probability: float) -> torch.Tensor:
    """Select whole words: each word's first token draws, the other tokens copy it.

    Args:
        word_ids: long `(B, T)` word index per token, -1 = never selected. A word is a run of
            equal ids within a row, so indices may restart in every row (as ``word_ids()``
            do) and only need to differ between neighbouring words.
        draw: float `(B, T)` uniform draws; only those at a word's first token are used.
        probability: selection probability per word.

    Returns:
        bool `(B, T)` selected tokens.
    """
    t = word_ids.shape[1]
    valid = word_ids >= 0
    # Row starts are word starts: the pad column is -1 in every row.
    prev = torch.nn.functional.pad(word_ids[:, :-1], (1, 0), value=-1)
    first = valid & (word_ids != prev)
    group = (first.long().cumsum(1) - 1).clamp_min(0)  # (B, T) slot of each token's word
    # Only first tokens write their slot; the rest write a spare column T that is dropped.
    chosen = torch.zeros(word_ids.shape[0], t + 1, dtype=torch.bool)
    chosen.scatter_(1, torch.where(first, group, t), first & (draw < probability))
    return chosen.gather(1, group) & valid


def mask_tokens(
    input_ids: torch.Tensor,
    special_mask: torch.Tensor,
    generator: torch.Generator,
    mask_token_id: int,
    replacement_ids: torch.Tensor,
    probability: float = 0.15,
    mask_replace: float = 0.8,
    random_replace: float = 0.1,
    word_ids: torch.Tensor | None = None,
) -> MaskedTokens:
    """BERT masking: select ``probability`` of tokens, then 80% [MASK], 10% random, 10% kept.

    Args:
        input_ids: long `(B, T)`.
        special_mask: bool `(B, T)` True for special and padding tokens (never selected).
        generator: the only randomness source.
        mask_token_id: id written at ``mask_replace`` of the selected positions.
        replacement_ids: long `(V',)` ids random replacements are drawn from (no specials).
        probability: selection probability per token (per word with ``word_ids``).
        mask_replace: fraction of selected tokens replaced by [MASK].
        random_replace: fraction of selected tokens replaced by a random token.
        word_ids: optional long `(B, T)` word index per token, -1 for special / padding:
            whole-word masking (all sub-tokens of a selected word are selected).

    Returns:
        ``MaskedTokens`` with the corrupted ids and labels (-100 where not selected).
    """
    draw = torch.rand(input_ids.shape, generator=generator)
    if word_ids is None:
        selected = (draw < probability) & ~special_mask
    else:
        selected = _select_words(word_ids, draw, probability) & ~special_mask
    labels = input_ids.masked_fill(~selected, -100)
    # One draw splits the selected tokens into [MASK] / random / unchanged in one pass.
    action = torch.rand(input_ids.shape, generator=generator)
    to_mask = selected & (action < mask_replace)
    to_random = selected & (action >= mask_replace) & (action < mask_replace + random_replace)
    pick = torch.randint(len(replacement_ids), input_ids.shape, generator=generator)
    out = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    out = torch.where(to_random, replacement_ids[pick], out)
    return MaskedTokens(out, labels)


def keep_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the False (visible) entries of bool `(B, N)`, ascending, -1-padded to `(B, Nk)`."""
    n = mask.shape[1]
    keep_counts = (~mask).sum(1)
    positions = torch.arange(n).expand_as(mask)
    # Masked positions sort after every visible one (key n), so visible ids come first.
    order = torch.where(mask, n, positions).sort(1).values[:, : int(keep_counts.max().item())]
    return torch.where(order >= n, -1, order)


def random_patch_mask(
    batch_size: int,
    num_patches: int,
    mask_ratio: float | torch.Tensor,
    generator: torch.Generator,
) -> PatchMask:
    """MAE-style random masking of ``round(ratio * N)`` patches per sample.

    Args:
        batch_size: B.
        num_patches: N, the full grid in row-major (timm PatchEmbed) order.
        mask_ratio: one ratio for the batch (equal kept counts, no -1), or float `(B,)`.
        generator: the only randomness source.

    Returns:
        ``PatchMask`` with ``bool_masked_pos`` `(B, N)` and ``keep_ids`` `(B, Nk)`.
    """
    ratios = torch.as_tensor(mask_ratio, dtype=torch.float64).expand(batch_size)
    num_masked = (ratios * num_patches).round().long().clamp(0, num_patches - 1)  # (B,)
    noise = torch.rand(batch_size, num_patches, generator=generator)
    rank = noise.argsort(1).argsort(1)  # (B, N) rank of each patch in a random order
    mask = rank < num_masked[:, None]
    return PatchMask(mask, keep_ids_from_mask(mask))


def sample_mask_ratios(
    batch_size: int, low: float, high: float, generator: torch.Generator
) -> torch.Tensor:
    """Per-sample mask ratios, uniform in [low, high]: float `(B,)`."""
    return low + (high - low) * torch.rand(batch_size, generator=generator, dtype=torch.float64)


def _uniform(generator: torch.Generator, a: float, b: float) -> float:
    return a + (b - a) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Inclusive of both ends, like ``random.randint``."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def _block_mask_one(
    grid: tuple[int, int],
    num_masking_patches: int,
    min_num_patches: int,
    max_num_patches: int,
    log_aspect: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    height, width = grid
    mask = torch.zeros(height, width, dtype=torch.bool)
    count = 0
    while count < num_masking_patches:
        budget = min(num_masking_patches - count, max_num_patches)
        delta = 0
        for _ in range(10):  # BEiT's MaskingGenerator: up to 10 tries to place one block
            area = _uniform(generator, min_num_patches, budget)
            aspect = math.exp(_uniform(generator, *log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < width and h < height:
                top, left = _randint(generator, 0, height - h), _randint(generator, 0, width - w)
                block = mask[top : top + h, left : left + w]
                new = h * w - int(block.sum())
                if 0 < new <= budget:
                    block.fill_(True)
                    delta = new
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask.flatten()  # (H*W,) row-major, timm PatchEmbed order


def block_mask(
    batch_size: int,
    grid: tuple[int, int],
    num_masking_patches: int,
    generator: torch.Generator,
    min_num_patches: int = 4,
    max_num_patches: int | None = None,
    min_aspect: float = 0.3,
    max_aspect: float | None = None,
) -> PatchMask:
    """BEiT block-wise masking: rectangles of >= ``min_num_patches`` until the target count.

    Follows ``MaskingGenerator`` of BEiT (FLAVA uses 75 of 196 patches, min 16, aspect 0.3).
    The count never exceeds ``num_masking_patches`` and can fall short when no block fits.

    Args:
        batch_size: B.
        grid: (H/P, W/P) patch grid.
        num_masking_patches: target masked count per sample.
        generator: the only randomness source.
        min_num_patches / max_num_patches: block area range.
        min_aspect / max_aspect: block aspect range (max defaults to 1 / min).

    Returns:
        ``PatchMask`` with ``bool_masked_pos`` `(B, N)`, N = H/P * W/P, and ``keep_ids``.
    """
    max_aspect = max_aspect or 1 / min_aspect
    log_aspect = (math.log(min_aspect), math.log(max_aspect))
    max_num = max_num_patches or num_masking_patches
    masks = [
        _block_mask_one(grid, num_masking_patches, min_num_patches, max_num, log_aspect, generator)
        for _ in range(batch_size)
    ]
    mask = torch.stack(masks)
    return PatchMask(mask, keep_ids_from_mask(mask))


@dataclass
class TextMasking:
    """BERT token masking settings (see ``mask_tokens``).

    Attributes:
        probability: selection probability per token (per word with ``whole_word``).
        mask_replace: fraction of selected tokens replaced by [MASK].
        random_replace: fraction of selected tokens replaced by a random token.
        whole_word: select all tokens of a word together, words as the tokenizer's own
            ``word_ids()`` give them (the batch's ``keys.WORD_IDS``).
    """

    probability: float = 0.15
    mask_replace: float = 0.8
    random_replace: float = 0.1
    whole_word: bool = False


@dataclass
class PatchMasking:
    """Image masking settings.

    Attributes:
        grid: (H/P, W/P) patch grid; N = H/P * W/P.
        mask_ratio: fraction of patches masked (block masking: target fraction).
        ratio_range: per-sample ratios uniform in this range (kept counts then differ and
            ``image_keep_ids`` is -1-padded); None = ``mask_ratio`` for every sample.
        block: BEiT block-wise masking instead of random patches.
        min_block_patches: smallest block area for block masking.
    """

    grid: tuple[int, int]
    mask_ratio: float = 0.75
    ratio_range: tuple[float, float] | None = None
    block: bool = False
    min_block_patches: int = 4

    def __call__(self, batch_size: int, generator: torch.Generator) -> PatchMask:
        """Masks for ``batch_size`` images: ``PatchMask`` `(B, N)` / `(B, Nk)`."""
        n = self.grid[0] * self.grid[1]
        if self.block:
            target = round(self.mask_ratio * n)
            return block_mask(batch_size, self.grid, target, generator, self.min_block_patches)
        ratio: float | torch.Tensor = self.mask_ratio
        if self.ratio_range is not None:
            ratio = sample_mask_ratios(batch_size, *self.ratio_range, generator)
        return random_patch_mask(batch_size, n, ratio, generator)
