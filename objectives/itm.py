"""Image-text matching: pooled CLS -> 2-way classifier over positives and sampled negatives.

The ``pair`` view encodes the B clean pairs and the negative pairs this head draws (see
:meth:`ITMHead.negatives`) in one extra encoder call, as ALBEF / ViLT run their matching
passes; labels are 1 for the B positives, 0 for the negatives. With ``masked_pass`` (FLAVA)
there is no extra call: the negatives replace their rows in the ``masked_pair`` view and the
masked-modeling losses skip those rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from onetower.data import keys
from onetower.objectives.base import ObjectiveOutput, accuracy
from onetower.objectives.contrastive import ContrastiveHead, image_features, text_features
from onetower.objectives.itm_negatives import NegativePairs, RandomNegatives, hard_negatives
from onetower.objectives.registry import register_objective
from onetower.objectives.views import IMAGE, PAIR, TEXT, ImageView, PairView, TextView
from onetower.outputs import EncoderOutput

NEGATIVE_MODES = ("random", "hard")
#: ``similarity(text_view, image_view) -> (B, B)`` image->text scores used to mine negatives.
Similarity = Callable[[EncoderOutput, EncoderOutput], torch.Tensor]


@torch.no_grad()
def cosine_similarity(text: EncoderOutput, image: EncoderOutput) -> torch.Tensor:
    """Fallback mining score without a contrastive head: cosine of the CLS features / 0.07."""
    img = F.normalize(image_features(image).float(), dim=-1)
    txt = F.normalize(text_features(text).float(), dim=-1)
    return img @ txt.t() / 0.07


@dataclass(frozen=True)
class HardNegatives:
    """ALBEF's hard negatives as a ``pair`` view's sampler: for every text an image drawn from
    softmax(similarity), and vice versa, from the clean text and image views."""

    similarity: Similarity = cosine_similarity
    views: tuple = (TextView(), ImageView())

    def __call__(
        self, batch: Mapping[str, Any], views: Mapping[str, Any], generator: torch.Generator
    ) -> NegativePairs:
        sim = self.similarity(views[TEXT], views[IMAGE])  # (B, B)
        return hard_negatives(sim, generator, batch.get(keys.IMAGE_IDS))


class ITMHead(nn.Module):
    """Binary matched / not-matched classifier on the pooled output of the ``pair`` view.

    Args:
        dim: encoder width D.
        negatives: ``"random"`` (in-batch image swaps) or ``"hard"`` (ALBEF mining).
        neg_ratio: random mode only: negatives per positive, in (0, 1].
        similarity: hard mode: image->text score function (the contrastive head's
            projections when it is enabled, injected by the builder).
        swap: random mode only: each negative *replaces* its positive in the ``pair`` view
            (ViLT: B sequences, ``neg_ratio`` of them with a swapped image) instead of being
            appended after the B positives (B + K sequences, more work per step).
        masked_pass: random mode only: classify the rows of the ``masked_pair`` view, where
            ``neg_ratio`` of the B rows get another image (FLAVA computes ITM on its masked
            multimodal pass, then MLM / MIM on the positive rows only); no pass of its own.
    """

    modalities = frozenset({"text", "image"})

    def __init__(
        self,
        dim: int,
        negatives: str = "random",
        neg_ratio: float = 1.0,
        similarity: Similarity | None = None,
        swap: bool = False,
        masked_pass: bool = False,
    ) -> None:
        super().__init__()
        if negatives not in NEGATIVE_MODES:
            raise ValueError(f"itm negatives must be one of {NEGATIVE_MODES}, got {negatives!r}")
        if swap and negatives != "random":
            raise ValueError("itm swap=true needs negatives=random (hard negatives add pairs)")
        if masked_pass and negatives != "random":
            raise ValueError("itm masked_pass=true needs negatives=random (rows are replaced)")
        if masked_pass and neg_ratio >= 1.0:
            raise ValueError(
                "itm masked_pass=true needs neg_ratio < 1: the masked-modeling losses keep only "
                f"the positive rows, and neg_ratio={neg_ratio} leaves none"
            )
        if not 0.0 < neg_ratio <= 1.0:
            raise ValueError(f"itm neg_ratio must be in (0, 1], got {neg_ratio}")
        self.classifier = nn.Linear(dim, 2)
        sampler = (
            RandomNegatives(neg_ratio)
            if negatives == "random"
            else HardNegatives(similarity or cosine_similarity)
        )
        layout = "masked_pass" if masked_pass else "swap" if swap else "append"
        self.views = (PairView(negatives=sampler, layout=layout),)

    def applies_to(self, batch: Mapping[str, Any]) -> bool:
        return keys.INPUT_IDS in batch and keys.PIXEL_VALUES in batch  # clean text and image

    def after_optimizer_step(self) -> None:
        pass

    def predict_pixels(self, views: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        return None

    def forward(self, views: Mapping[str, Any], batch: Mapping[str, Any]) -> ObjectiveOutput:
        """Args:
            views: ``{"pair": PairOutput}`` (positives and negatives along the batch).
            batch: unused (labels come with the view).

        Returns:
            loss = CE over all pairs; metrics ``acc``, ``pos_acc``, ``neg_acc`` and
            ``chance_loss``: the loss of a head that only knows the share of matched pairs
            (the entropy of the labels; ln 2 for one negative per positive, 0.636 for ALBEF's
            two), which ITM sits at until it starts to compare image and text.
        """
        pair = views[PAIR]
        logits = self.classifier(pair.encoder.pooler_output)  # (B + K, 2)
        labels = pair.itm_labels
        loss = F.cross_entropy(logits.float(), labels)
        with torch.no_grad():
            # masked means, not logits[pos]: boolean indexing is a host sync (nonzero)
            correct = (logits.argmax(-1) == labels).float()  # (B + K,)
            pos = (labels == 1).float()
            metrics = {
                "acc": accuracy(logits, labels),
                "pos_acc": (correct * pos).sum() / pos.sum().clamp(min=1),
                "neg_acc": (correct * (1 - pos)).sum() / (1 - pos).sum().clamp(min=1),
                "chance_loss": F.binary_cross_entropy(pos.mean().expand_as(pos), pos),
            }
        return ObjectiveOutput(loss=loss, metrics=metrics)


@register_objective("itm", uses=("contrastive",))
def build_itm(
    model: nn.Module,
    built: Mapping[str, nn.Module],
    negatives: str = "random",
    neg_ratio: float = 1.0,
    swap: bool = False,
    masked_pass: bool = False,
) -> ITMHead:
    """ITM head; hard negatives reuse the contrastive head's similarity when it is built."""
    contrastive = built.get("contrastive")
    similarity = contrastive.similarity if isinstance(contrastive, ContrastiveHead) else None
    return ITMHead(model.config.hidden_size, negatives, neg_ratio, similarity, swap, masked_pass)
