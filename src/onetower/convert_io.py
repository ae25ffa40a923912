"""Writing an imported model: the encoder folder plus, when the source had pretraining heads,
the heads file that ``model.init`` reads to continue pretraining."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from onetower.modeling import OneTowerModel

#: Same name as ``onetower.pretraining.HEADS_FILE`` (the rooms import the core, not back).
HEADS_FILE = "objectives.safetensors"


def need_key(state: dict[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    """``state[key]``; a missing key is a ``KeyError`` naming it and the kind of checkpoint
    expected (``source``), the converters' one message for truncated or foreign files."""
    if key not in state:
        raise KeyError(f"{source} state dict has no {key!r}: truncated, or not a {source} model")
    return state[key]


def pop_key(state: dict[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    """:func:`need_key`, removing ``key`` from ``state`` (what is left over was not mapped)."""
    value = need_key(state, key, source)
    del state[key]
    return value


def refuse_existing(dst: str | Path) -> Path:
    """``dst`` as a Path; an error when it already holds something (nothing is overwritten)."""
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(
            f"{dst} already exists and is not empty: converters never overwrite; "
            "choose a new output folder"
        )
    return dst


def save_converted(
    model: OneTowerModel, dst: str | Path, heads: dict[str, torch.Tensor] | None = None
) -> Path:
    """Save ``model`` into the new folder ``dst``, with ``heads`` (keys as the pretraining
    composer names them, e.g. ``mlm.transform.dense.weight``) as the heads file."""
    dst = refuse_existing(dst)
    model.save_pretrained(dst)
    if heads:
        state = {k: v.detach().cpu().contiguous() for k, v in heads.items()}
        save_file(state, str(dst / HEADS_FILE))
    return dst
