"""Planning a step's views from the heads' specs, and running them at most once per step.

:func:`plan_views` merges, at build time, every spec the enabled heads declare (and the views
those specs read) into one spec per kind, and refuses two heads whose specs conflict, naming
both. :class:`StepViews` is the per-step lazy cache the composer hands the heads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import nn

from onetower.objectives.views import ViewSpec


class ViewConflict(ValueError):
    """Two heads ask for the same kind of view built in incompatible ways."""


def merge_specs(a: ViewSpec, b: ViewSpec) -> tuple[ViewSpec, str | None]:
    """Merge two specs of one kind field by field (``None`` = any). Returns the merged spec and
    the first conflicting field as ``"field: a vs b"`` (None when they agree)."""
    if type(a) is not type(b):
        return a, f"spec types {type(a).__name__} vs {type(b).__name__}"
    merged = {}
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if x is not None and y is not None and x != y:
            return a, f"{f.name}: {x!r} vs {y!r}"
        merged[f.name] = x if x is not None else y
    return dataclasses.replace(a, **merged), None


def plan_views(views_by_head: Mapping[str, Collection[ViewSpec]]) -> dict[str, ViewSpec]:
    """One merged spec per view kind for the given heads' declared views.

    Args:
        views_by_head: head name -> the specs it declares.

    Returns:
        kind -> merged spec, including the views other views read (a hard-negative sampler's
        text and image views, say).

    Raises:
        ViewConflict: two heads' specs of one kind disagree (both heads and the field named),
            or a merged spec is invalid as a whole (e.g. FLAVA's masked-pass ITM with dropped
            patches).
    """
    plan: dict[str, ViewSpec] = {}
    owners: dict[str, list[str]] = {}
    for head, specs in views_by_head.items():
        pending = list(specs)
        while pending:
            spec = pending.pop()
            pending.extend(spec.requires())
            if spec.kind in plan:
                merged, clash = merge_specs(plan[spec.kind], spec)
                if clash is not None:
                    raise ViewConflict(
                        f"objectives {', '.join(map(repr, owners[spec.kind]))} and {head!r} ask "
                        f"for conflicting {spec.kind!r} views ({clash}); drop one of them or "
                        "align their options"
                    )
                plan[spec.kind] = merged
            else:
                plan[spec.kind] = spec
            if head not in owners.setdefault(spec.kind, []):
                owners[spec.kind].append(head)
    for kind, spec in plan.items():
        if (problem := spec.check(plan)) is not None:
            raise ViewConflict(
                f"the {kind!r} view of {', '.join(map(repr, owners[kind]))}: {problem}"
            )
    return plan


def needed_kinds(specs: Collection[ViewSpec], plan: Mapping[str, ViewSpec]) -> frozenset[str]:
    """The kinds a step runs for ``specs``: theirs and those their planned specs read."""
    found: set[str] = set()
    pending = [s.kind for s in specs]
    while pending:
        kind = pending.pop()
        if kind not in found:
            found.add(kind)
            pending.extend(s.kind for s in plan[kind].requires())
    return frozenset(found)


class StepViews:
    """Lazy per-step cache of views over one batch: ``step[kind]`` runs the planned spec of
    that kind once.

    Args:
        model: the shared encoder (``OneTowerModel``).
        batch: the step's batch dict.
        plan: kind -> spec, from :func:`plan_views`.
        generator: randomness for patch dropout and ITM negatives.
        planned: the kinds this step's heads will read (lets ``pair`` reuse the towers of
            ``text`` and ``image``); None = unknown, nothing is reused.
    """

    def __init__(
        self,
        model: nn.Module,
        batch: Mapping[str, Any],
        plan: Mapping[str, ViewSpec],
        generator: torch.Generator | None,
        planned: Collection[str] | None = None,
    ) -> None:
        self.model, self.batch, self.plan, self.generator = model, dict(batch), plan, generator
        self.planned = frozenset(planned or ())
        self._cache: dict[str, Any] = {}
        #: (itm labels, negatives) drawn on the masked pass (FLAVA's layout), else None
        self.masked_pass_itm: tuple[torch.Tensor, Any] | None = None
        #: the batch the heads score against: as given, except that FLAVA's masked-pass ITM
        #: drops the rows with another image from the MLM labels and the MIM mask
        self.loss_batch: dict[str, Any] = self.batch
        #: view kinds in the order they were computed (each appears once).
        self.computed: list[str] = []

    def __getitem__(self, kind: str) -> Any:
        if kind not in self._cache:
            if kind not in self.plan:
                raise KeyError(f"no head planned a {kind!r} view; planned: {sorted(self.plan)}")
            self._cache[kind] = self.plan[kind].encode(self)
            self.computed.append(kind)
        return self._cache[kind]
