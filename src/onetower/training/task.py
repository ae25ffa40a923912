"""The contract between the engine and what it trains.

The engine (:func:`onetower.training.engine.train`) owns the run: the Accelerator, the
output folder, the loop, gradient accumulation, clipping, the optimizer and schedule,
logging, checkpoints, exact resume and the final save. A :class:`Task` owns what is trained
and how it is scored: pretraining (:mod:`onetower.pretraining`), fine-tuning
(:mod:`onetower.finetuning`). The engine knows no objective, task or data set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from accelerate import Accelerator
from torch import nn


@dataclass
class Built:
    """What :meth:`Task.build` returns.

    Attributes:
        module: the ``nn.Module`` the engine prepares (DDP / FSDP), trains and hands back to
            :meth:`Task.step` (wrapped) and the other hooks (unwrapped).
        param_groups: optimizer parameter groups over ``module``'s parameters (each a dict
            with ``params`` and optional ``lr`` / ``weight_decay``).
        loaders: source name -> an unprepared ``DataLoader`` of training batches.
        ratios: source name -> sampling weight of that source per step.
        batch_size: samples per micro-batch per process (for the throughput figure).
    """

    module: nn.Module
    param_groups: list[dict[str, Any]]
    loaders: dict[str, torch.utils.data.DataLoader]
    ratios: dict[str, float]
    batch_size: int


@dataclass(frozen=True)
class StepContext:
    """Where a micro-step sits in the run: everything a task may derive randomness from.

    Attributes:
        step: the optimizer step (0-based) this micro-step belongs to.
        micro: index of the micro-batch within the step (gradient accumulation).
        micro_step: ``step * grad_accum + micro``.
        rank, world_size: this process and the number of processes.
        slot, slots: this micro-batch's place among all micro-batches of the step, across
            processes (``micro * world_size + rank`` of ``grad_accum * world_size``): draws
            made for the whole step's batch and sliced by slot are the same for 1 or N
            processes, with or without accumulation.
        seed: the run's seed.
        source: the name of the source the batch came from.
    """

    step: int
    micro: int
    micro_step: int
    rank: int
    world_size: int
    slot: int
    slots: int
    seed: int
    source: str


@dataclass
class StepOutput:
    """What :meth:`Task.step` returns.

    Attributes:
        loss: the scalar to backpropagate (attached to the graph).
        logs: detached scalars to average and log (``loss`` is added by the engine).
    """

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class RunInfo:
    """Facts of the finished run a task's summary and model card may use."""

    output_dir: Path
    final_dir: Path
    steps: int
    steps_this_run: int
    seconds: float
    samples_per_s: float
    metrics: dict[str, float]
    history: dict[str, list[tuple[int, float]]]
    files: dict[str, Path]


@runtime_checkable
class Task(Protocol):
    """What the engine drives. One object per run, built from the recipe's config."""

    #: What the run record calls the task ("pretraining", "vqa", ...).
    name: str
    #: DDP must look for parameters without a gradient in a step (steps that run only some
    #: heads); known before the build, since the Accelerator is made first.
    find_unused_parameters: bool

    def build(self, accelerator: Accelerator) -> Built:
        """Read the data, build the model and everything the run trains. Runs before the
        output folder is claimed: every check that can fail belongs here."""
        ...

    def step(self, module: nn.Module, batch: Mapping[str, Any], ctx: StepContext) -> StepOutput:
        """Forward one micro-batch through the prepared ``module`` (under autocast)."""
        ...

    def after_optimizer_step(self, module: nn.Module) -> None:
        """Called after every optimizer step with the unwrapped module."""
        ...

    def evaluate(self, module: nn.Module, accelerator: Accelerator, step: int) -> dict[str, float]:
        """Held-out metrics (every process calls it; the main process's values are logged)."""
        ...

    def save(self, module: nn.Module, folder: Path) -> None:
        """Write the final model and what loads with it (tokenizer, processor) into ``folder``."""
        ...

    def finish(self, module: nn.Module, accelerator: Accelerator, info: RunInfo) -> dict[str, Any]:
        """Before the final save, on the main process: write the task's outputs (pictures,
        predictions) and add them to ``info.files``; return the task's part of the run
        record: ``model_class``, ``summary`` (a paragraph naming ``info.final_dir``),
        ``data`` (``sources``, ``description``, ``limitations``, ``tags``), ``skipped``
        counts and anything else worth keeping."""
        ...
