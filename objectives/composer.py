"""The composer: builds the views the enabled heads ask for, runs the heads, weights the losses.

A recipe drives it with one stanza per head, e.g.::

    objectives:
      mlm: {weight: 1.0}
      mim: {weight: 1.0, target: pixel, norm_pix_loss: true, decoder_depth: 1}
      itm: {weight: 1.0, negatives: hard}
      contrastive: {weight: 1.0}

Heads with weight 0 are not built. At build time the heads' view specs are merged into one
plan (:func:`~onetower.objectives.view_plan.plan_views`); two heads asking for conflicting
views fail then, naming both. On an unpaired batch (text-only or image-only) only the heads
whose modalities are present run (unimodal MLM / MIM).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from onetower.data import keys
from onetower.objectives.base import check_options
from onetower.objectives.registry import OBJECTIVES, build_objective, build_order, builder_options
from onetower.objectives.view_plan import StepViews, needed_kinds, plan_views
from onetower.objectives.views import ViewSpec


@dataclass
class ComposerOutput:
    """One step's objective result.

    Attributes:
        loss: ``sum(weight * head loss)`` over the heads that ran (attached to the graph).
        losses: detached unweighted ``<head>_loss`` of every head that ran.
        metrics: detached ``<head>_<metric>`` scalars.
        views: view names computed this step, in order (each at most once).
    """

    loss: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    views: tuple[str, ...] = ()

    def logs(self) -> dict[str, torch.Tensor]:
        """Flat detached dict for a tracker: ``loss``, every ``<head>_loss`` and metric."""
        return {"loss": self.loss.detach(), **self.losses, **self.metrics}


def batch_modalities(batch: Mapping[str, Any]) -> frozenset[str]:
    """Which streams a batch carries: a subset of ``{"text", "image"}``."""
    found = set()
    if keys.INPUT_IDS in batch or keys.MLM_INPUT_IDS in batch:
        found.add("text")
    if keys.PIXEL_VALUES in batch:
        found.add("image")
    return frozenset(found)


class ObjectiveComposer(nn.Module):
    """Owns the encoder and the heads; ``forward(batch)`` returns a :class:`ComposerOutput`.

    Wrap this module (not the bare encoder) with DDP / ``accelerator.prepare`` so the heads'
    parameters are synchronised too.

    Args:
        model: the shared encoder (``OneTowerModel``).
        heads: name -> head module (see :class:`~onetower.objectives.base.Objective`).
        weights: name -> loss weight (> 0).
        seed: seed of the generator behind ITM negatives and patch dropout; give each process
            its own (e.g. ``seed + rank``).

    Raises:
        ValueError: no head, mismatched names, or heads whose view specs conflict.
    """

    def __init__(
        self,
        model: nn.Module,
        heads: Mapping[str, nn.Module],
        weights: Mapping[str, float],
        seed: int = 0,
    ) -> None:
        super().__init__()
        if set(heads) != set(weights):
            raise ValueError(f"heads {sorted(heads)} and weights {sorted(weights)} differ")
        if not heads:
            raise ValueError("no objective enabled: give at least one head a weight > 0")
        self.model = model
        self.heads = nn.ModuleDict(dict(heads))
        self.weights = {k: float(v) for k, v in weights.items()}
        self.generator = torch.Generator().manual_seed(seed)
        #: view kind -> the merged spec every head of that kind reads
        self.plan: dict[str, ViewSpec] = plan_views({n: h.views for n, h in self.heads.items()})

    @classmethod
    def from_config(
        cls, model: nn.Module, config: Mapping[str, Mapping[str, Any] | None], seed: int = 0
    ) -> ObjectiveComposer:
        """Build from a recipe's ``objectives`` mapping ``{name: {weight: w, **options}}``.

        Raises:
            ValueError: unknown head names or options (named), or a missing / negative weight.
        """
        stanzas = {name: dict(opts or {}) for name, opts in config.items()}
        weights: dict[str, float] = {}
        for name, opts in stanzas.items():
            if "weight" not in opts:
                raise ValueError(f"objective {name!r} has no 'weight'")
            weights[name] = float(opts.pop("weight"))
            if weights[name] < 0:
                raise ValueError(f"objective {name!r} has a negative weight {weights[name]}")
        for name, opts in stanzas.items():  # weight-0 stanzas are checked for typos too
            if name not in OBJECTIVES:
                raise ValueError(
                    f"unknown objective {name!r}; registered: {', '.join(sorted(OBJECTIVES))}"
                )
            check_options(name, opts, builder_options(OBJECTIVES[name]))
        heads: dict[str, nn.Module] = {}
        for name in build_order([n for n in stanzas if weights[n] > 0]):
            heads[name] = build_objective(name, model, stanzas[name], heads)
        return cls(model, heads, {n: weights[n] for n in heads}, seed=seed)

    def views(
        self,
        batch: Mapping[str, Any],
        generator: torch.Generator | None = None,
        heads: Collection[str] | None = None,
    ) -> StepViews:
        """The lazy views of ``batch`` for ``heads`` (default: every head), e.g. to read one
        pass outside a training step (evaluation, pictures)."""
        names = list(self.heads) if heads is None else list(heads)
        planned = needed_kinds([s for n in names for s in self.heads[n].views], self.plan)
        return StepViews(self.model, batch, self.plan, generator or self.generator, planned)

    def active_heads(self, batch: Mapping[str, Any]) -> list[str]:
        """Names of the heads that apply to this batch (modalities present, labels present)."""
        present = batch_modalities(batch)
        return [
            name
            for name, head in self.heads.items()
            if head.modalities <= present and head.applies_to(batch)
        ]

    def forward(
        self, batch: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> ComposerOutput:
        """Run every applicable head on its views and weight the losses.

        Args:
            batch: dict keyed by :mod:`onetower.data.keys`.
            generator: this step's randomness (ITM negatives, patch dropout), e.g. one seeded
                from ``(seed, step, slot)`` so a resumed run redraws the same negatives; default:
                the composer's own generator, seeded once at construction.

        Raises:
            ValueError: no enabled head applies to this batch.
        """
        active = self.active_heads(batch)
        if not active:
            raise ValueError(
                f"no enabled objective ({', '.join(self.heads)}) applies to a batch with keys "
                f"{sorted(batch)}"
            )
        views = self.views(batch, generator, active)
        total: torch.Tensor | None = None
        losses: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        for name in active:
            head = self.heads[name]
            head_views = {s.kind: views[s.kind] for s in head.views}  # before loss_batch
            out = head(head_views, views.loss_batch)
            weighted = self.weights[name] * out.loss
            total = weighted if total is None else total + weighted
            losses[f"{name}_loss"] = out.loss.detach()
            metrics.update({f"{name}_{k}": v.detach() for k, v in out.metrics.items()})
        return ComposerOutput(total, losses, metrics, tuple(views.computed))

    def after_optimizer_step(self) -> None:
        """Run every head's hook after an optimizer step."""
        for head in self.heads.values():
            head.after_optimizer_step()
