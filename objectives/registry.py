"""Name -> builder registry, so a recipe's ``objectives:`` stanza alone picks the heads.

Each objective file registers its builder with :func:`register_objective`; adding an objective
is one file, one export line in ``objectives/__init__.py`` (the import registers it), one test
file and one YAML stanza. A builder has the signature
``builder(model, built, **options) -> head``: ``model`` is the shared encoder (the source of
injected shared weights such as the token embedding), ``built`` the heads built before it (the
composer builds ``contrastive`` first, so ITM hard negatives can reuse its projections), and ``options`` the stanza minus ``weight``. Unknown options are errors
that name them (the builder's keyword arguments are the known set).
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


def register_objective(name: str) -> Callable[[HeadBuilder], HeadBuilder]:
    """Decorator registering ``builder`` under ``name`` (a duplicate name is an error)."""

    def wrap(builder: HeadBuilder) -> HeadBuilder:
        if name in OBJECTIVES and OBJECTIVES[name] is not builder:
            raise ValueError(f"objective {name!r} is already registered")
        OBJECTIVES[name] = builder
        return builder

    return wrap


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
