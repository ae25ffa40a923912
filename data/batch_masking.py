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
from onetower.data.masking import mask_tokens


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
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text: TextMasking | None = None,
        patch: PatchMasking | None = None,
    ) -> None:
        self.text, self.patch = text, patch
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

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict:
        """Return a copy of ``batch`` with masking keys added (tensors on the batch's device)."""
        out = dict(batch)
        if self.text is not None and keys.INPUT_IDS in batch:
            ids = batch[keys.INPUT_IDS]
            cpu = ids.cpu()
            special = self.special[cpu]
            if keys.ATTENTION_MASK in batch:
                special |= ~batch[keys.ATTENTION_MASK].cpu().bool()
            words = self.word_ids(cpu, special) if self.text.whole_word else None
            masked = mask_tokens(
                cpu, special, generator, self.mask_token_id, self.replacement_ids,
                self.text.probability, self.text.mask_replace, self.text.random_replace, words,
            )  # fmt: skip
            out[keys.MLM_INPUT_IDS] = masked.input_ids.to(ids.device)
            out[keys.MLM_LABELS] = masked.labels.to(ids.device)
        if self.patch is not None and keys.PIXEL_VALUES in batch:
            px = batch[keys.PIXEL_VALUES]
            mask = self.patch(px.shape[0], generator)
            out[keys.MIM_MASK] = mask.bool_masked_pos.to(px.device)
            out[keys.IMAGE_KEEP_IDS] = mask.keep_ids.to(px.device)
        return out
