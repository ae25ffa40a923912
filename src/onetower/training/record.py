"""What a finished run leaves behind: the run record (``metrics.json``), the history, the
final model folder (written atomically, with its model card) and the returned result.

One writer for every task: pretraining and fine-tuning records have one layout, which the
model card (:mod:`onetower.hub.card`) reads.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from omegaconf import DictConfig
from torch import nn
from torch.distributed.tensor import DTensor

from onetower.hub import prepare_model_folder

RECORD_FILE, HISTORY_FILE = "metrics.json", "history.json"


@dataclass
class RunResult:
    """What a run returns.

    Attributes:
        output_dir: the run folder.
        final_model: ``output_dir/final`` (``output_dir/checkpoints`` for a run that stopped
            early).
        steps: optimizer steps done.
        metrics: the last evaluation's metrics.
        history: logged series: name -> [(step, value), ...].
        summary: the paragraph printed at the end ("stopped early" when it stopped early).
        files: plots and pictures the run wrote.
        record: the run record written to ``metrics.json`` (empty for an early stop).
    """

    output_dir: Path
    final_model: Path
    steps: int
    metrics: dict[str, float]
    history: dict[str, list[tuple[int, float]]]
    summary: str
    files: dict[str, Path] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)


def dump_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a temporary file renamed over the target)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def run_record(
    cfg: DictConfig,
    task_name: str,
    accelerator: Accelerator,
    facts: dict[str, Any],
    task_part: dict[str, Any],
) -> dict[str, Any]:
    """The run record: the engine's facts plus the task's part (summary, data, skipped...)."""
    return {
        "recipe": cfg.run.recipe,
        "task": task_name,
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "mixed_precision": str(accelerator.mixed_precision),
        **facts,
        **task_part,
    }


def save_final(out_dir: Path, write: Callable[[Path], None], card: bool = True) -> Path:
    """Write the final model into ``out_dir/final`` through a temporary folder and a rename,
    so an interrupted save never replaces a good model with a half-written one.

    Args:
        out_dir: the run folder (its ``metrics.json`` feeds the model card).
        write: writes the model files into the folder it is given.
        card: add the model card (README.md) and the code files that let the folder load
            with ``trust_remote_code=True`` where onetower is not installed.
    """
    final, tmp, old = out_dir / "final", out_dir / ".final.tmp", out_dir / ".final.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    prepare_model_folder(tmp, run_dir=out_dir if card else None)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


@torch.no_grad()
def replicas_identical(accelerator: Accelerator, module: nn.Module) -> bool:
    """Whether every process ends with bit-identical weights (a DDP invariant, checked; under
    FSDP, whether the gathered full weights agree on every rank)."""
    # a sharded (FSDP) parameter is a DTensor: its full value is gathered (every rank joins)
    flat = torch.cat([full(p).detach().double().flatten() for p in module.parameters()])
    # (world, 2) fingerprints; exact equality of sums of values and of squares
    prints = accelerator.gather(
        torch.stack([flat.sum(), (flat * flat).sum()])[None].to(accelerator.device)
    )
    return bool((prints == prints[0]).all())


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The full value of a parameter: a sharded DTensor gathered, any other tensor as is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
