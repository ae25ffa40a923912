"""Masking applied to a collated batch with a generator chosen by the caller.

The training loop masks each batch on the main process with a generator seeded from
``(seed, step, rank)``: masks then do not depend on DataLoader workers or on how far an
iterator has run, which is what makes a resumed run bit-identical to an uninterrupted one.
This is the only masking path; the collators draw no randomness.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from onetower.data import keys
from onetower.data.masking import PatchMasking, TextMasking, keep_ids_from_mask, mask_tokens


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A generator that depends only on ``(seed, step, rank)``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


class BatchMasker:
    """Add MLM (``mlm_input_ids``, ``mlm_labels``) and MIM (``bool_masked_pos``,
    ``image_keep_ids``) keys to a batch that has none.

    Whole-word masking (``TextMasking(whole_word=True)``) reads the words from the batch's
    ``keys.WORD_IDS``, which ``TextCollator`` / ``PairCollator`` take from the tokenizer's own
    ``word_ids()``: right for any sub-word scheme, where reading word starts off the ids
    (e.g. WordPiece's ``##``) would silently mask single pieces of BPE / SentencePiece words.

    Args:
        tokenizer: the fast tokenizer the batch was made with.
        text: token masking settings, or None for no MLM keys.
        patch: patch masking settings, or None for no MIM keys.
        drop_text: also give ``text_keep_ids``: the selected tokens are to be dropped from the
            encoder (M3AE), not replaced; padding is dropped too.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text: TextMasking | None = None,
        patch: PatchMasking | None = None,
        drop_text: bool = False,
    ) -> None:
        self.text, self.patch, self.drop_text = text, patch, drop_text
        self.mask_token_id = tokenizer.mask_token_id
        size = max(tokenizer.get_vocab().values()) + 1
        self.special = torch.zeros(size, dtype=torch.bool)
        self.special[torch.tensor(sorted(set(tokenizer.all_special_ids)))] = True
        self.replacement_ids = (~self.special).nonzero().squeeze(1)

    def __call__(
        self,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator,
        rank: int = 0,
        world_size: int = 1,
    ) -> dict:
        """Return a copy of ``batch`` with masking keys added (tensors on the batch's device).

        With ``world_size > 1`` the batch is slot ``rank`` (rows ``[rank * B, (rank + 1) * B)``)
        of a global batch of ``world_size`` equal slots: the random draws are made for the
        whole global batch (from the same generator in every slot) and each slot keeps its
        rows, so the masks equal those of one pass over the global batch. Slots are processes
        and / or gradient-accumulation micro-batches. Text must be padded to a fixed length.

        Raises:
            ValueError: whole-word masking of a text batch without ``keys.WORD_IDS``.
        """
        out = dict(batch)
        if self.text is not None and keys.INPUT_IDS in batch:
            ids = batch[keys.INPUT_IDS]
            special = self.special[ids.cpu()]
            if keys.ATTENTION_MASK in batch:
                special |= ~batch[keys.ATTENTION_MASK].cpu().bool()
            full_ids = _globalise(ids.cpu(), 0, rank, world_size)
            full_special = _globalise(special, True, rank, world_size)
            words = None
            if self.text.whole_word:
                if keys.WORD_IDS not in batch:
                    raise ValueError(
                        f"whole-word masking needs the batch key {keys.WORD_IDS!r} "
                        "(keys.WORD_IDS: the tokenizer's word_ids(), added by TextCollator / "
                        f"PairCollator); the batch has {sorted(batch)}"
                    )
                # Special and padding tokens never belong to a word, whatever the batch says.
                local = batch[keys.WORD_IDS].cpu().masked_fill(special, -1)
                words = _globalise(local, -1, rank, world_size)
            masked = mask_tokens(
                full_ids,
                full_special,
                generator,
                self.mask_token_id,
                self.replacement_ids,
                self.text.probability,
                self.text.mask_replace,
                self.text.random_replace,
                words,
            )
            rows = slice(rank * ids.shape[0], (rank + 1) * ids.shape[0])
            out[keys.MLM_INPUT_IDS] = masked.input_ids[rows].to(ids.device)
            out[keys.MLM_LABELS] = masked.labels[rows].to(ids.device)
            if self.drop_text:
                gone = (masked.labels[rows] != -100) | ~batch.get(
                    keys.ATTENTION_MASK, torch.ones_like(ids)
                ).cpu().bool()
                out[keys.TEXT_KEEP_IDS] = keep_ids_from_mask(gone).to(ids.device)
        if self.patch is not None and keys.PIXEL_VALUES in batch:
            px = batch[keys.PIXEL_VALUES]
            B = px.shape[0]
            mask = self.patch(B * world_size, generator)
            rows = slice(rank * B, (rank + 1) * B)
            out[keys.MIM_MASK] = mask.bool_masked_pos[rows].to(px.device)
            out[keys.IMAGE_KEEP_IDS] = mask.keep_ids[rows].to(px.device)
        return out


def _globalise(x: torch.Tensor, fill: int | bool, rank: int, world_size: int) -> torch.Tensor:
    """Place the local rows `(B, T)` at slot ``rank`` of a `(world_size * B, T)` tensor whose
    other slots are ``fill`` (padding: never selected, and no draws depend on their content)."""
    if world_size == 1:
        return x
    B = x.shape[0]
    full = x.new_full((world_size * B, *x.shape[1:]), fill)
    full[rank * B : (rank + 1) * B] = x
    return full
