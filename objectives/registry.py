"""Name -> builder registry, so a recipe's ``objectives:`` stanza alone picks the heads.

Each objective file registers its builder with :func:`register_objective`; adding an objective
is one file, one export line in ``objectives/__init__.py`` (the import registers it), one test
file and one YAML stanza. A builder has the signature
``builder(model, built, **options) -> head``: ``model`` is the shared encoder (the source of
injected shared weights such as the token embedding), ``built`` the heads built before it, and
``options`` the stanza minus ``weight``. A builder that takes parts of another head declares
it (``uses``): that head, when enabled, is built first (ITM's hard negatives reuse the
contrastive projections). Unknown options are errors that name them (the builder's keyword
arguments are the known set).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from onetower.objectives.base import check_options

HeadBuilder = Callable[..., nn.Module]

#: name -> builder, filled by :func:`register_objective` at import time.
OBJECTIVES: dict[str, HeadBuilder] = {}
#: name -> the heads whose parts its builder takes when they are enabled.
USES: dict[str, tuple[str, ...]] = {}


def register_objective(
    name: str, uses: tuple[str, ...] = ()
) -> Callable[[HeadBuilder], HeadBuilder]:
    """Decorator registering ``builder`` under ``name`` (a duplicate name is an error);
    ``uses`` names heads to build before it when they are enabled."""

    def wrap(builder: HeadBuilder) -> HeadBuilder:
        if name in OBJECTIVES and OBJECTIVES[name] is not builder:
            raise ValueError(f"objective {name!r} is already registered")
        OBJECTIVES[name] = builder
        USES[name] = tuple(uses)
        return builder

    return wrap


def build_order(names: list[str]) -> list[str]:
    """``names`` ordered so that every head comes after the enabled heads it uses.

    Raises:
        ValueError: the heads use each other in a cycle.
    """
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ValueError(f"objectives use each other in a cycle through {name!r}")
        visiting.add(name)
        for dep in USES.get(name, ()):
            if dep in names:
                visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in names:
        visit(name)
    return order


def builder_options(builder: HeadBuilder) -> set[str]:
    """Keyword options a builder accepts (everything after ``model`` and ``built``)."""
    params = list(inspect.signature(builder).parameters.values())[2:]
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def build_objective(
    name: str, model: nn.Module, options: Mapping[str, Any], built: Mapping[str, nn.Module]
) -> nn.Module:
    """Build one registered head, checking its options first.

    Raises:
        ValueError: unknown head name, or unknown option keys (both named in the message).
    """
    if name not in OBJECTIVES:
        raise ValueError(
            f"unknown objective {name!r}; registered: {', '.join(sorted(OBJECTIVES)) or 'none'}"
        )
    builder = OBJECTIVES[name]
    check_options(name, options, builder_options(builder))
    return builder(model, built, **dict(options))
