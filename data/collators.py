"""Collators: list of samples -> the batch dict of ``onetower.data.keys``.

Collators draw no randomness: masking is applied to the collated batch by
``batch_masking.BatchMasker`` with a generator seeded by ``(seed, step, rank)``, so masks
depend neither on DataLoader workers nor on how far an iterator has run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from onetower.data import keys

logger = logging.getLogger(__name__)


def carry_cursor(samples: Sequence[dict[str, Any]], batch: dict) -> dict:
    """The stream cursor of the batch's last sample (``pipeline.CURSOR``), when it has one."""
    if samples and "__cursor__" in samples[-1]:
        batch["__cursor__"] = samples[-1]["__cursor__"]
    return batch


def drop_skipped(samples: Sequence[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The samples that decoded (skipped ones are None); empty when the whole batch was bad."""
    return [s for s in samples if s is not None]


class TextCollator:
    """Tokenise and pad texts: ``input_ids``, ``attention_mask`` and ``word_ids``.

    Args:
        tokenizer: a fast tokenizer with [CLS]/[SEP]/[PAD]/[MASK].
        max_length: longer texts are truncated (T <= max_length).
        pad_to_max_length: pad to ``max_length`` instead of the longest text in the batch.
        counter: counts truncated texts (``text_truncated``) when given; either way the first
            truncation in a process is a warning naming ``data.max_text_len``.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        *,
        pad_to_max_length: bool = False,
        counter: Any = None,
    ) -> None:
        self.counter, self._warned = counter, False
        if not tokenizer.is_fast:
            raise ValueError("a fast tokenizer is needed (word_ids for whole-word masking)")
        self.tokenizer, self.max_length = tokenizer, max_length
        self.padding = "max_length" if pad_to_max_length else "longest"

    def text_batch(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` / ``attention_mask`` / ``word_ids`` long `(B, T)` for ``texts``."""
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
        self._count_truncated(enc, len(texts))
        words = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(texts))]
        word_ids = torch.tensor(words, dtype=torch.long)
        word_ids = word_ids.masked_fill(enc["special_tokens_mask"].bool(), -1)
        return {
            keys.INPUT_IDS: enc["input_ids"],
            keys.ATTENTION_MASK: enc["attention_mask"],
            keys.WORD_IDS: word_ids,
        }

    def _count_truncated(self, enc: Any, n: int) -> None:
        # the fast tokenizer keeps what truncation cut in each encoding's `overflowing`
        cut = [len(e.overflowing) > 0 for e in enc.encodings] if enc.encodings else []
        if not any(cut):
            return
        if self.counter is not None:
            self.counter.note("text_truncated", sum(cut))
        if not self._warned:
            self._warned = True
            longest = max(
                len(e.ids) + sum(len(o.ids) for o in e.overflowing) for e in enc.encodings
            )
            logger.warning(
                "%d of %d texts in a batch are longer than data.max_text_len=%d tokens (up to "
                "about %d) and are cut; raise data.max_text_len to keep them (the run summary "
                "counts them all; this warning is shown once per process)",
                sum(cut),
                n,
                self.max_length,
                longest,
            )

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
        if not (samples := drop_skipped(samples)):
            return {}
        return carry_cursor(samples, self.text_batch([s["text"] for s in samples]))


class ImageCollator:
    """Stack images and ids: ``pixel_values`` `(B, C, H, W)` and ``image_ids`` `(B,)`."""

    def image_batch(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {
            keys.PIXEL_VALUES: torch.stack([s["pixel_values"] for s in samples]),
            keys.IMAGE_IDS: torch.tensor([s["image_id"] for s in samples], dtype=torch.long),
        }

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
        if not (samples := drop_skipped(samples)):
            return {}
        return carry_cursor(samples, self.image_batch(samples))


def text_and_pixels(
    text: TextCollator, samples: Sequence[dict[str, Any]]
) -> dict[str, torch.Tensor]:
    """Task batches (VQA, NLVR2): the samples' texts tokenised and padded, plus their
    ``pixel_values`` stacked (`(B, C, H, W)`, or `(B, I, C, H, W)` for I images per sample)."""
    batch = text.text_batch([s["text"] for s in samples])
    batch[keys.PIXEL_VALUES] = torch.stack([s["pixel_values"] for s in samples])
    return batch


class PairCollator:
    """Text + image batches: everything ``TextCollator`` and ``ImageCollator`` give, together.

    Args:
        tokenizer: a fast tokenizer with [CLS]/[SEP]/[PAD]/[MASK].
        max_length: longer texts are truncated (T <= max_length).
        pad_to_max_length: pad to ``max_length`` instead of the longest text in the batch.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        *,
        pad_to_max_length: bool = False,
        counter: Any = None,
    ) -> None:
        self.text = TextCollator(
            tokenizer, max_length, pad_to_max_length=pad_to_max_length, counter=counter
        )
        self.image = ImageCollator()

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
        if not (samples := drop_skipped(samples)):
            return {}
        batch = self.text.text_batch([s["text"] for s in samples])
        batch.update(self.image.image_batch(samples))
        return carry_cursor(samples, batch)
