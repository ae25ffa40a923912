"""Bookkeeping shared by the pretraining and fine-tuning loops: the loop state saved with
each checkpoint, running averages of the logged values, and what happens after a step
(log, evaluate, checkpoint) or when a run stops early."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig

from onetower.training.build import make_accelerator
from onetower.training.checkpoint import claim_output_dir, resolve_resume, save_checkpoint
from onetower.training.config import flatten, save_config
from onetower.training.report import RunResult


@dataclass
class TrainState:
    """Loop state saved in every checkpoint: the optimizer step and the logged history."""

    step: int = 0
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {"step": self.step, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.history = {k: [tuple(p) for p in v] for k, v in state["history"].items()}

    def record(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.history.setdefault(k, []).append((self.step, float(v)))


class RunningLogs:
    """Per-name sums of the values logged by micro-steps (tensors: no host sync until a log
    line is written), averaged across micro-steps and processes every ``log_every`` steps."""

    def __init__(self, samples_per_step: int, grad_accum: int) -> None:
        self.samples_per_step, self.grad_accum = samples_per_step, grad_accum
        self.sums: dict[str, tuple[torch.Tensor, int]] = {}
        self.micro_steps, self.tick = 0, time.perf_counter()

    def add(self, values: dict[str, torch.Tensor]) -> None:
        """One micro-step's values (a head logs only on the micro-steps it ran)."""
        for k, v in values.items():
            total, count = self.sums.get(k, (0.0, 0))
            self.sums[k] = (total + v.detach().float(), count + 1)
        self.micro_steps += 1

    def after_step(self, accelerator: Accelerator, cfg: DictConfig, state: TrainState,
                   scheduler: Any, bar: Any, out_dir: Path,
                   evaluate: Callable[[], Any]) -> None:  # fmt: skip
        """Log (every ``train.log_every``), evaluate (``train.eval_every``, not at the last
        step: the run ends with an evaluation) and checkpoint (``train.save_every``)."""
        t = cfg.train
        if state.step % t.log_every == 0 or state.step == t.max_steps:
            logs = {
                k: float(accelerator.reduce(v / n, "mean"))
                for k, (v, n) in sorted(self.sums.items())
            }
            now = time.perf_counter()
            steps = self.micro_steps / self.grad_accum
            logs["samples_per_s"] = self.samples_per_step * steps / (now - self.tick)
            logs["lr"] = scheduler.get_last_lr()[0]
            self.sums, self.micro_steps, self.tick = {}, 0, now
            state.record(logs)
            accelerator.log(logs, step=state.step)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", sps=f"{logs['samples_per_s']:.0f}")
        if t.eval_every and state.step % t.eval_every == 0 and state.step < t.max_steps:
            evaluate()
        if t.save_every and state.step % t.save_every == 0:
            save_checkpoint(accelerator, out_dir, state.step, t.keep_last)


def stop_early(accelerator: Accelerator, cfg: DictConfig, state: TrainState) -> RunResult:
    """``train.stop_at`` reached (as a preempted job would stop): save a resumable checkpoint."""
    out_dir = Path(cfg.run.output_dir)
    save_checkpoint(accelerator, out_dir, state.step, cfg.train.keep_last)
    accelerator.end_training()
    return RunResult(
        out_dir, out_dir / "checkpoints", state.step, {}, state.history, "stopped early"
    )


def open_run(
    cfg: DictConfig, find_unused_parameters: bool = True
) -> tuple[Accelerator, Path | None]:
    """The Accelerator (see ``make_accelerator``) and the checkpoint to resume from; claims
    ``run.output_dir`` (never writing into another run's folder) and saves the config there."""
    out_dir = Path(cfg.run.output_dir)
    accelerator = make_accelerator(cfg, find_unused_parameters)
    set_seed(cfg.run.seed)
    resume_from = resolve_resume(out_dir, cfg.run.resume)
    if accelerator.is_main_process:
        claim_output_dir(out_dir, cfg.run.recipe, cfg.run.resume is not None, cfg.run.overwrite)
        save_config(cfg, out_dir / "config.yaml")
    accelerator.wait_for_everyone()
    return accelerator, resume_from


def start_state(accelerator: Accelerator, cfg: DictConfig, resume_from: Path | None,
                *stateful: Any) -> TrainState:  # fmt: skip
    """Register the loop state and ``stateful`` objects (scheduler, data stream) for
    checkpointing, resume them when asked, and start the trackers.

    The scheduler is stepped by hand once per optimizer step, so it is registered instead of
    prepared: a prepared one steps ``num_processes`` times.
    """
    state = TrainState()
    accelerator.register_for_checkpointing(*stateful, state)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        accelerator.print(f"resumed from {resume_from} at step {state.step}")
    if cfg.run.tracker != "none":
        accelerator.init_trackers(cfg.run.recipe, config=flatten(cfg))
    return state
