"""What every objective head shares: the head contract, its output and loss helpers.

A head is an ``nn.Module`` that declares everything the machinery uses (no attribute is
looked up by ``hasattr``): the views it reads as specs (:mod:`onetower.objectives.views`),
the batch modalities it needs, whether a batch applies, and two hooks, one run after every
optimizer step and one that predicts pixels for the reconstruction pictures. Its ``forward``
takes the views (kind -> output) and the batch and returns an :class:`ObjectiveOutput`. A
head never logs, calls backward or reads global config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from onetower.objectives.views import ViewSpec

#: Label value that marks a position as not selected (HF / BERT convention).
IGNORE_INDEX = -100


@dataclass
class ObjectiveOutput:
    """What a head returns.

    Attributes:
        loss: unweighted scalar loss; a finite zero (still connected to the head's parameters)
            when nothing in the batch is selected.
        metrics: detached scalars keyed by a short name (``acc``, ...); the composer prefixes
            them with the head name (``mlm_acc``).
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Objective(Protocol):
    """The head contract (structural: heads compose modules, they do not inherit)."""

    #: The views this head reads, as specs; the composer merges them with the other heads'
    #: specs at build time and hands the head ``{spec.kind: output}``.
    views: tuple[ViewSpec, ...]
    #: Batch modalities the head needs: a subset of ``{"text", "image"}``.
    modalities: frozenset[str]

    def __call__(self, views: Mapping[str, Any], batch: Mapping[str, Any]) -> ObjectiveOutput: ...

    def applies_to(self, batch: Mapping[str, Any]) -> bool:
        """True when the batch carries everything this head needs (e.g. its labels)."""
        ...

    def after_optimizer_step(self) -> None:
        """Called once after every optimizer step (e.g. clamp a learned temperature)."""
        ...

    def predict_pixels(
        self, views: Mapping[str, Any], batch: Mapping[str, Any]
    ) -> torch.Tensor | None:
        """Predicted pixels of every patch `(B, N, P*P*C)` in the space of
        ``patchify(pixel_values)`` (for reconstruction pictures), or None for heads that do
        not predict pixels."""
        ...


def select_rows(states: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Gather the selected positions of `(B, L, D)` states into `(M, D)` (M may be 0).

    Indexing by ``nonzero`` keeps the result connected to ``states`` even when M = 0, so a
    loss over no rows is a zero with (zero) gradients rather than a missing graph.
    """
    b, pos = selected.nonzero(as_tuple=True)
    return states[b, pos]


def cross_entropy_mean(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over `(M, C)` logits; 0 (not NaN) when M = 0.

    The sum/count form keeps the graph, so an empty selection still gives parameter gradients.
    """
    total = F.cross_entropy(logits.float(), labels, reduction="sum")
    return total / max(labels.numel(), 1)


@torch.no_grad()
def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Detached top-1 accuracy of `(M, C)` logits; 0 when M = 0."""
    if labels.numel() == 0:
        return logits.new_zeros((), dtype=torch.float32)
    return (logits.argmax(-1) == labels).float().mean()


def check_options(owner: str, given: Mapping[str, Any], known: set[str]) -> None:
    """Raise naming every unknown option key of ``owner``."""
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(
            f"unknown option(s) for objective {owner!r}: {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(known))})"
        )


class PredictionTransform(nn.Module):
    """BERT's prediction-head transform: dense, GELU, LayerNorm (`(..., D)` -> `(..., D)`)."""

    def __init__(self, dim: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))
