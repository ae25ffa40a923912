"""The engine's run state: the loop position saved in every checkpoint, the batch stream over
the task's sources, and running averages of the logged values.

The stream draws each micro-step's source with probability proportional to its ratio, from a
generator seeded by ``(seed, micro_step)``: the same on every process, so all ranks run the
same kind of batch each step. Each source's position (epoch, batches taken) is saved with the
checkpoint, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator, skip_first_batches

from onetower.data.batch_masking import step_generator


@dataclass
class TrainState:
    """Loop state saved in every checkpoint: the optimizer step, the steps skipped for a
    non-finite loss or gradient, and the logged history."""

    step: int = 0
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    skipped_steps: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "history": self.history, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.skipped_steps = state.get("skipped_steps", 0)
        self.history = {k: [tuple(p) for p in v] for k, v in state["history"].items()}

    def record(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.history.setdefault(k, []).append((self.step, float(v)))


class Stream:
    """Per-micro-step source choice plus resumable per-source positions.

    Registered with ``accelerator.register_for_checkpointing``: its ``state_dict`` holds each
    source's epoch and the number of batches taken in that epoch.
    """

    def __init__(self, loaders: dict[str, Any], ratios: dict[str, float], seed: int) -> None:
        self.loaders, self.seed = loaders, seed
        self.names = sorted(loaders)
        self.weights = torch.tensor([ratios[n] for n in self.names], dtype=torch.float64)
        self.position = {n: {"epoch": 0, "taken": 0} for n in self.names}
        self._iters: dict[str, Any] = {}

    def state_dict(self) -> dict:
        return {"position": {n: dict(p) for n, p in self.position.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.position = {n: dict(p) for n, p in state["position"].items()}
        self._iters = {}  # rebuilt lazily at the saved position

    def choose(self, micro_step: int) -> str:
        """The source of a micro-step; identical on every process."""
        if len(self.names) == 1:
            return self.names[0]
        g = step_generator(self.seed, micro_step, rank=10_007)  # a stream apart from masking's
        return self.names[int(torch.multinomial(self.weights, 1, generator=g))]

    def _iterator(self, name: str) -> Any:
        loader, pos = self.loaders[name], self.position[name]
        if hasattr(loader, "set_epoch"):  # a DataLoader, not a head: its API varies by type
            loader.set_epoch(pos["epoch"])
        # accelerate 1.15's DataLoaderShard.set_epoch skips dataset.set_epoch when the batch
        # sampler is sharded (several processes): augmentation epochs would then differ from
        # a one-process run, so set it here too.
        if hasattr(getattr(loader, "dataset", None), "set_epoch"):
            loader.dataset.set_epoch(pos["epoch"])
        if pos["taken"]:  # resume mid-epoch: the seedable sampler replays this epoch's order
            return iter(skip_first_batches(loader, pos["taken"]))
        return iter(loader)

    def next(self, micro_step: int) -> tuple[str, dict[str, torch.Tensor]]:
        """``(source name, batch)`` for a micro-step."""
        name = self.choose(micro_step)
        if name not in self._iters:
            self._iters[name] = self._iterator(name)
        try:
            batch = next(self._iters[name])
        except StopIteration:
            self.position[name] = {"epoch": self.position[name]["epoch"] + 1, "taken": 0}
            self._iters[name] = self._iterator(name)
            batch = next(self._iters[name])
        self.position[name]["taken"] += 1
        return name, batch


class RunningLogs:
    """Per-name sums of the values logged by micro-steps (tensors: no host sync until a log
    line is written), averaged across micro-steps and processes when flushed."""

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

    def flush(self, accelerator: Accelerator, lr: float) -> dict[str, float]:
        """The averages since the last flush (every process must call it), with throughput
        and the learning rate."""
        logs = {
            k: float(accelerator.reduce(v / n, "mean")) for k, (v, n) in sorted(self.sums.items())
        }
        now = time.perf_counter()
        steps = self.micro_steps / self.grad_accum
        logs["samples_per_s"] = self.samples_per_step * steps / max(now - self.tick, 1e-9)
        logs["lr"] = lr
        self.sums, self.micro_steps, self.tick = {}, 0, now
        return logs
