"""Atomic, rotating training checkpoints on top of ``accelerator.save_state``.

A checkpoint is written into ``<dir>/checkpoints/.step_<n>.tmp`` and renamed to
``step_<n>`` only once every process has finished writing, so a run killed while saving
leaves the previous checkpoint intact and loadable. Only the last ``keep`` are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator

_STEP = re.compile(r"^step_(\d+)$")
RUN_MARKER = "onetower_run.json"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a checkpoint folder was written at."""
    m = _STEP.match(Path(path).name)
    if m is None:
        raise ValueError(
            f"{str(path)!r} is not a checkpoint folder (expected a name like step_100)"
        )
    return int(m.group(1))


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """``None`` -> start fresh; ``"latest"`` -> the newest complete checkpoint; a path -> that
    checkpoint.

    Raises:
        FileNotFoundError: nothing to resume (says what the folder holds): never a silent
            restart from step 0.
    """
    if not resume:
        return None
    if resume == "latest":
        ckpts = list_checkpoints(output_dir)
        if ckpts:
            return ckpts[-1]
        out = Path(output_dir)
        held = (
            sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
            if out.is_dir()
            else []
        )
        raise FileNotFoundError(
            f"run.resume=latest: {out} holds no checkpoint to resume from ("
            + (f"it holds {', '.join(held)}" if held else "it does not exist or is empty")
            + "); start it again with run.overwrite=true, or choose another run.output_dir"
        )
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"resume checkpoint {resume!r} does not exist")
    checkpoint_step(path)
    return path


def fill_optimizer_state(optimizer: torch.optim.Optimizer) -> int:
    """Give every trainable parameter without optimizer state the state a fresh optimizer would
    create for it (zeros, step 0); returns how many got one.

    A parameter that has had no gradient yet (a head unused so far, an encoder pooler no
    objective reads) has no state, while a sharded (FSDP2) resume loads into an optimizer whose
    state covers every parameter: torch DCP then fails on the missing keys. Zero moments at step
    0 are exactly what Adam / AdamW start from, so this changes no update. The layout is copied
    from a parameter that has state; with none yet (no step taken) nothing is done.
    """
    opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
    with_state = [p for p in params if opt.state.get(p)]
    if not with_state:
        return 0
    ref = with_state[0]
    filled = 0
    for p in params:
        if opt.state.get(p):
            continue
        new = {}
        for k, v in opt.state[ref].items():
            if torch.is_tensor(v) and v.dim() > 0 and v.shape == ref.shape:
                new[k] = torch.zeros_like(p)  # a moment: the parameter's shape and sharding
            elif torch.is_tensor(v) and v.dim() == 0:
                new[k] = torch.zeros_like(v)  # a counter (Adam's step)
            else:
                raise TypeError(
                    f"cannot initialise optimizer state {k!r} of {type(opt).__name__} for a "
                    "parameter that has had no gradient yet"
                )
        opt.state[p] = new
        filled += 1
    return filled


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    keep: int,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """``save_state`` atomically as ``checkpoints/step_<step>``, then prune to the last ``keep``.

    With ``optimizer``, parameters that never had a gradient get fresh optimizer state first
    (:func:`fill_optimizer_state`), so a sharded checkpoint holds state for every parameter.
    """
    if optimizer is not None:
        fill_optimizer_state(optimizer)
    root = Path(output_dir) / "checkpoints"
    final = root / f"step_{step}"
    tmp = root / f".step_{step}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "COMPLETE").write_text(json.dumps({"step": step}))
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
            old = root / f".step_{step}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)  # atomic on one filesystem
        for stale in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def claim_output_dir(
    output_dir: str | Path, run_name: str, resuming: bool, overwrite: bool
) -> None:
    """Refuse to write into a folder that holds another run (nothing is overwritten).

    A folder is ours if it is empty, or holds our marker for the same recipe and we resume.
    """
    out = Path(output_dir)
    marker = out / RUN_MARKER
    if out.exists() and any(out.iterdir()) and not overwrite:
        if not marker.is_file():
            raise FileExistsError(
                f"output dir {str(out)!r} is not empty and holds no onetower run: choose another "
                "run.output_dir"
            )
        owner = json.loads(marker.read_text()).get("recipe")
        if owner != run_name:
            raise FileExistsError(
                f"output dir {str(out)!r} holds a {owner!r} run, not {run_name!r}"
            )
        if not resuming:
            raise FileExistsError(
                f"output dir {str(out)!r} already holds a {owner!r} run: pass run.resume=latest to "
                "continue it, run.overwrite=true to replace it, or choose another run.output_dir"
            )
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"recipe": run_name}))
