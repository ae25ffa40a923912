"""Collators: list of samples -> the batch dict of ``onetower.data.keys``.

All randomness comes from a ``torch.Generator`` derived from ``seed`` and, inside a DataLoader
worker, the worker's seed (which a seeded ``DataLoader(generator=...)`` makes reproducible and
which changes every epoch), so workers never repeat each other's masks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from onetower.data import keys
from onetower.data.masking import (
    PatchMask,
    block_mask,
    mask_tokens,
    random_patch_mask,
    sample_mask_ratios,
)


def drop_skipped(samples: Sequence[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The samples that decoded (skipped ones are None); empty when the whole batch was bad."""
    return [s for s in samples if s is not None]


@dataclass
class TextMasking:
    """BERT token masking settings (see ``masking.mask_tokens``)."""

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
        n = self.grid[0] * self.grid[1]
        if self.block:
            target = round(self.mask_ratio * n)
            return block_mask(batch_size, self.grid, target, generator, self.min_block_patches)
        ratio: float | torch.Tensor = self.mask_ratio
        if self.ratio_range is not None:
            ratio = sample_mask_ratios(batch_size, *self.ratio_range, generator)
        return random_patch_mask(batch_size, n, ratio, generator)


class WorkerGenerator:
    """A ``torch.Generator`` per process: ``seed`` in the main process, mixed with the
    DataLoader worker seed inside workers."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._gen: torch.Generator | None = None
        self._owner: tuple[int, int | None] | None = None

    def get(self) -> torch.Generator:
        info = torch.utils.data.get_worker_info()
        owner = (os.getpid(), None if info is None else info.seed)
        if self._gen is None or owner != self._owner:
            seed = self.seed if info is None else (self.seed * 1_000_003 + info.seed) % 2**63
            self._gen, self._owner = torch.Generator().manual_seed(seed), owner
        return self._gen


class TextCollator:
    """Tokenise and pad texts (``input_ids``, ``attention_mask``, ``word_ids``); optionally add
    MLM corruption.

    Args:
        tokenizer: a fast tokenizer with [CLS]/[SEP]/[PAD]/[MASK].
        max_length: longer texts are truncated (T <= max_length).
        mlm: token masking settings, or None for no ``mlm_*`` keys.
        seed: randomness seed.
        pad_to_max_length: pad to ``max_length`` instead of the longest text in the batch.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        mlm: TextMasking | None = None,
        seed: int = 0,
        pad_to_max_length: bool = False,
    ) -> None:
        if not tokenizer.is_fast:
            raise ValueError("a fast tokenizer is needed (word_ids for whole-word masking)")
        self.tokenizer, self.max_length, self.mlm = tokenizer, max_length, mlm
        self.padding = "max_length" if pad_to_max_length else "longest"
        self.rng = WorkerGenerator(seed)
        special = set(tokenizer.all_special_ids)
        self.replacement_ids = torch.tensor([i for i in range(len(tokenizer)) if i not in special])

    def text_batch(
        self, texts: Sequence[str], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts),
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        # Word bounds come from the tokenizer's pre-tokenisation, the only source that is right
        # for every sub-word scheme; the ids alone cannot tell (BPE / SentencePiece pieces carry
        # no continuation mark). Special tokens and padding have no word (None -> -1); special
        # tokens written in the text are -1 too.
        words = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(texts))]
        word_ids = torch.tensor(words, dtype=torch.long)
        word_ids = word_ids.masked_fill(enc["special_tokens_mask"].bool(), -1)
        batch = {
            keys.INPUT_IDS: enc["input_ids"],
            keys.ATTENTION_MASK: enc["attention_mask"],
            keys.WORD_IDS: word_ids,
        }
        if self.mlm is not None:
            special = enc["special_tokens_mask"].bool() | ~enc["attention_mask"].bool()
            masked = mask_tokens(
                enc["input_ids"],
                special,
                generator,
                self.tokenizer.mask_token_id,
                self.replacement_ids,
                self.mlm.probability,
                self.mlm.mask_replace,
                self.mlm.random_replace,
                word_ids if self.mlm.whole_word else None,
            )
            batch[keys.MLM_INPUT_IDS], batch[keys.MLM_LABELS] = masked.input_ids, masked.labels
        return batch

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
        if not (samples := drop_skipped(samples)):
            return {}
        return self.text_batch([s["text"] for s in samples], self.rng.get())


class ImageCollator:
    """Stack images and ids; optionally add patch masks.

    Args:
        patch_masking: settings, or None for no ``bool_masked_pos`` / ``image_keep_ids``.
        seed: randomness seed.
    """

    def __init__(self, patch_masking: PatchMasking | None = None, seed: int = 0) -> None:
        self.patch_masking = patch_masking
        self.rng = WorkerGenerator(seed)

    def image_batch(self, samples: Sequence[dict[str, Any]], generator: torch.Generator) -> dict:
        batch = {
            keys.PIXEL_VALUES: torch.stack([s["pixel_values"] for s in samples]),
            keys.IMAGE_IDS: torch.tensor([s["image_id"] for s in samples], dtype=torch.long),
        }
        if self.patch_masking is not None:
            mask = self.patch_masking(len(samples), generator)
            batch[keys.MIM_MASK], batch[keys.IMAGE_KEEP_IDS] = mask.bool_masked_pos, mask.keep_ids
        return batch

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
        if not (samples := drop_skipped(samples)):
            return {}
        return self.image_batch(samples, self.rng.get())


def text_and_pixels(
    text: TextCollator, samples: Sequence[dict[str, Any]]
) -> dict[str, torch.Tensor]:
    """Task batches (VQA, NLVR2): the samples' texts tokenised and padded, plus their
    ``pixel_values`` stacked (`(B, C, H, W)`, or `(B, I, C, H, W)` for I images per sample)."""
    # text_batch draws randomness only for MLM corruption, which task collators do not ask for
    batch = text.text_batch([s["text"] for s in samples], torch.Generator())
    batch[keys.PIXEL_VALUES] = torch.stack([s["pixel_values"] for s in samples])
    return batch


class PairCollator:
    """Text + image batches: everything ``TextCollator`` and ``ImageCollator`` give, together."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        mlm: TextMasking | None = None,
        patch_masking: PatchMasking | None = None,
        seed: int = 0,
        pad_to_max_length: bool = False,
    ) -> None:
        self.text = TextCollator(tokenizer, max_length, mlm, seed, pad_to_max_length)
        self.image = ImageCollator(patch_masking, seed)
        self.rng = WorkerGenerator(seed)

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
        if not (samples := drop_skipped(samples)):
            return {}
        gen = self.rng.get()
        batch = self.text.text_batch([s["text"] for s in samples], gen)
        batch.update(self.image.image_batch(samples, gen))
        return batch
