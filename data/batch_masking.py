"""Masking applied to a collated batch with a generator chosen by the caller.

The training loop masks each batch on the main process with a generator seeded from
``(seed, step, rank)``: masks then do not depend on DataLoader workers or on how far an
iterator has run, which is what makes a resumed run bit-identical to an uninterrupted one.
(The collators' own masking, with a per-process generator, suits evaluation and ad-hoc use.)
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from onetower.data import keys
from onetower.data.collators import PatchMasking, TextMasking
from onetower.data.masking import keep_ids_from_mask, mask_tokens


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A generator that depends only on ``(seed, step, rank)``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


class BatchMasker:
    """Add MLM (``mlm_input_ids``, ``mlm_labels``) and MIM (``bool_masked_pos``,
    ``image_keep_ids``) keys to a batch that has none.

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
        vocab = tokenizer.get_vocab()
        size = max(vocab.values()) + 1
        self.special = torch.zeros(size, dtype=torch.bool)
        self.special[torch.tensor(sorted(set(tokenizer.all_special_ids)))] = True
        # WordPiece continuation pieces ("##s") belong to the previous token's word: word
        # boundaries come from the ids alone, with no re-tokenisation.
        self.continues = torch.zeros(size, dtype=torch.bool)
        for token, i in vocab.items():
            self.continues[i] = token.startswith("##")
        self.replacement_ids = (~self.special).nonzero().squeeze(1)

    def word_ids(self, input_ids: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
        """long `(B, T)` word index per token (-1 for special / padding)."""
        starts = ~self.continues[input_ids] & ~special
        ids = starts.long().cumsum(1) - 1  # (B, T)
        return ids.masked_fill(special, -1)

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
        """
        out = dict(batch)
        if self.text is not None and keys.INPUT_IDS in batch:
            ids = batch[keys.INPUT_IDS]
            special = self.special[ids.cpu()]
            if keys.ATTENTION_MASK in batch:
                special |= ~batch[keys.ATTENTION_MASK].cpu().bool()
            full_ids, full_special = self._globalise(ids.cpu(), special, rank, world_size)
            words = self.word_ids(full_ids, full_special) if self.text.whole_word else None
            masked = mask_tokens(
                full_ids, full_special, generator, self.mask_token_id, self.replacement_ids,
                self.text.probability, self.text.mask_replace, self.text.random_replace, words,
            )  # fmt: skip
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

    def _globalise(
        self, ids: torch.Tensor, special: torch.Tensor, rank: int, world_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Place the local rows `(B, T)` at their slot of an all-special `(world * B, T)` batch."""
        if world_size == 1:
            return ids, special
        B, T = ids.shape
        full_ids = ids.new_zeros(world_size * B, T)
        full_special = special.new_ones(world_size * B, T)
        full_ids[rank * B : (rank + 1) * B] = ids
        full_special[rank * B : (rank + 1) * B] = special
        return full_ids, full_special
