"""Masked language modeling: BERT prediction head tied to the text token embedding."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from onetower.data import keys
from onetower.objectives.base import (
    IGNORE_INDEX,
    MASKED_PAIR,
    ObjectiveOutput,
    PredictionTransform,
    accuracy,
    cross_entropy_mean,
    select_rows,
)
from onetower.objectives.registry import register_objective


class MLMHead(nn.Module):
    """Cross-entropy on MLM-selected text positions of the ``masked_pair`` view.

    Works on paired views (text conditioned on the image) and text-only views alike: it reads
    the text stream through the encoder output's segment map. Logits are computed only at the
    selected positions (gathered first), never over the whole sequence.

    Args:
        embedding: the text embedder's token embedding `(V, D)`; its weight is the decoder
            weight (tied, as in BERT / ViLT). Injected by the builder.
        eps: LayerNorm epsilon of the transform.
    """

    views = (MASKED_PAIR,)
    modalities = frozenset({"text"})
    #: masked tokens are replaced ([MASK] / random / kept) in the encoder input
    text_masking = "replace"

    def __init__(self, embedding: nn.Embedding, eps: float = 1e-12) -> None:
        super().__init__()
        vocab, dim = embedding.weight.shape
        self.transform = PredictionTransform(dim, eps)
        self.embedding = embedding  # shared with the encoder: one tensor, two module paths
        self.bias = nn.Parameter(torch.zeros(vocab))

    def applies_to(self, batch: Mapping[str, Any]) -> bool:
        return keys.MLM_LABELS in batch and keys.MLM_INPUT_IDS in batch

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits `(M, V)` of selected states `(M, D)`."""
        return self.transform(states) @ self.embedding.weight.t() + self.bias

    def forward(self, views: Mapping[str, Any], batch: Mapping[str, Any]) -> ObjectiveOutput:
        """Args:
            views: ``{"masked_pair": EncoderOutput}`` over the MLM-masked text.
            batch: needs ``MLM_LABELS`` long `(B, T)` (-100 = not selected).

        Returns:
            loss = mean CE over selected tokens; metrics ``acc``.
        """
        out = views[MASKED_PAIR]
        labels = batch[keys.MLM_LABELS]  # (B, T)
        selected = labels != IGNORE_INDEX
        text_mask = out.token_mask("text")
        if text_mask is not None:  # a label on a padded slot is a collator bug; never train on it
            selected = selected & text_mask
        states = select_rows(out.tokens("text"), selected)  # (M, D)
        logits = self.logits(states)  # (M, V)
        target = labels[selected]  # (M,)
        return ObjectiveOutput(
            loss=cross_entropy_mean(logits, target), metrics={"acc": accuracy(logits, target)}
        )


@register_objective("mlm")
def build_mlm(model: nn.Module, built: Mapping[str, nn.Module], eps: float = 1e-12) -> MLMHead:
    """MLM head tied to ``model.get_input_embeddings()``."""
    return MLMHead(model.get_input_embeddings(), eps=eps)
