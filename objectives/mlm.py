"""Masked language modeling: BERT prediction head tied to the text token embedding."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from onetower.data import TextMasking, keys
from onetower.objectives.base import (
    IGNORE_INDEX,
    ObjectiveOutput,
    PredictionTransform,
    accuracy,
    cross_entropy_mean,
    select_rows,
)
from onetower.objectives.registry import register_objective
from onetower.objectives.views import MASKED_PAIR, MaskedPairView


class MLMHead(nn.Module):
    """Cross-entropy on MLM-selected text positions of the ``masked_pair`` view.

    Works on paired views (text conditioned on the image) and text-only views alike: it reads
    the text stream through the encoder output's segment map. Logits are computed only at the
    selected positions (gathered first), never over the whole sequence.

    Args:
        embedding: the text embedder's token embedding `(V, D)`; its weight is the decoder
            weight (tied, as in BERT / ViLT). Injected by the builder.
        eps: LayerNorm epsilon of the transform.
        masking: how tokens are selected; they are replaced ([MASK] / random / kept) in the
            encoder input of the ``masked_pair`` view.
        tied: decode with the token embedding (BERT / ViLT); False gives the head its own
            decoder weight ``decoder`` `(V, D)`, starting as a copy of the embedding (FLAVA's
            heads are untied).
    """

    modalities = frozenset({"text"})

    def __init__(
        self,
        embedding: nn.Embedding,
        eps: float = 1e-12,
        masking: TextMasking | None = None,
        tied: bool = True,
    ) -> None:
        super().__init__()
        self.views = (MaskedPairView(text_mode="replace", text_masking=masking or TextMasking()),)
        vocab, dim = embedding.weight.shape
        self.transform = PredictionTransform(dim, eps)
        # The decoder weight is the encoder's token embedding (tied, as in BERT / ViLT). It stays
        # out of this module's children, so the tensor has one name in a state dict: saved once,
        # with the encoder, and loaded back tied (no "Removed shared tensor" on each checkpoint).
        self._embedding = (embedding,)
        self.bias = nn.Parameter(torch.zeros(vocab))
        self.decoder = None if tied else nn.Parameter(embedding.weight.detach().clone())

    def applies_to(self, batch: Mapping[str, Any]) -> bool:
        return keys.MLM_LABELS in batch and keys.MLM_INPUT_IDS in batch

    @property
    def embedding(self) -> nn.Embedding:
        """The encoder's token embedding, whose weight decodes (tied)."""
        return self._embedding[0]

    def after_optimizer_step(self) -> None:
        pass

    def predict_pixels(self, views: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        return None

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits `(M, V)` of selected states `(M, D)`."""
        weight = self.embedding.weight if self.decoder is None else self.decoder
        return self.transform(states) @ weight.t() + self.bias

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
def build_mlm(
    model: nn.Module,
    built: Mapping[str, nn.Module],
    probability: float = 0.15,
    whole_word: bool = False,
    mask_replace: float = 0.8,
    random_replace: float = 0.1,
    eps: float = 1e-12,
    tied: bool = True,
) -> MLMHead:
    """MLM head tied to ``model.get_input_embeddings()`` (``tied=false``: its own decoder).

    Args:
        probability: share of tokens (of words, with ``whole_word``) selected (BERT: 0.15).
        whole_word: select whole words, by the tokenizer's own word boundaries (ViLT).
        mask_replace, random_replace: shares of the selected tokens replaced by [MASK] and by
            a random token (BERT: 0.8 / 0.1; the rest stay unchanged).
        eps: LayerNorm epsilon of the prediction transform.
        tied: decode with the token embedding; false for an untied decoder (converted FLAVA).
    """
    if not 0.0 < probability <= 1.0:
        raise ValueError(f"mlm probability must be in (0, 1], got {probability}")
    masking = TextMasking(probability, mask_replace, random_replace, whole_word)
    return MLMHead(model.get_input_embeddings(), eps=eps, masking=masking, tied=tied)
