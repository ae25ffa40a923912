"""The engine's run state: the loop position saved in every checkpoint, the batch stream over
the task's sources, and running averages of the logged values.

The stream draws each micro-step's source with probability proportional to its ratio, from a
generator seeded by ``(seed, micro_step)``: the same on every process, so all ranks run the
same kind of batch each step. Each source's position (epoch, batches taken) is saved with the
checkpoint, so a resumed run continues exactly where it stopped: map-style data replays its
seeded sampler; tar-shard streams also save each worker's cursor (the rows of its shuffled
shard stream read, and whose turn is next) and resume there, reading but not decoding the rows
before it. Positions are saved per process (streams differ by rank).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator, PartialState, skip_first_batches
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import gather_object

from onetower.data.batch_masking import step_generator

logger = logging.getLogger(__name__)


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


def prepare_loader(accelerator: Accelerator, loader: torch.utils.data.DataLoader) -> Any:
    """``accelerator.prepare_data_loader``, except for a stream that is already this process's
    part (its dataset says ``split_by_process``: tar shards dealt out by rank): accelerate
    would otherwise read the whole stream on rank 0 and dispatch it (its default for an
    ``IterableDataset``) or have every rank read everything and keep a slice. Such a loader is
    only wrapped to put batches on the device."""
    if not getattr(loader.dataset, "split_by_process", False):
        return accelerator.prepare_data_loader(loader)
    return prepare_data_loader(
        loader,
        accelerator.device,
        num_processes=1,
        process_index=0,
        put_on_device=True,
        dispatch_batches=False,
        non_blocking=accelerator.non_blocking,
    )


class Stream:
    """Per-micro-step source choice plus resumable per-source positions.

    Registered with ``accelerator.register_for_checkpointing``: its ``state_dict`` holds each
    source's epoch and the number of batches taken in that epoch.
    """

    def __init__(self, loaders: dict[str, Any], ratios: dict[str, float], seed: int) -> None:
        self.loaders, self.seed = loaders, seed
        self.names = sorted(loaders)
        self.weights = torch.tensor([ratios[n] for n in self.names], dtype=torch.float64)
        self.position = {n: self._start(0) for n in self.names}
        self._iters: dict[str, Any] = {}

    @staticmethod
    def _start(epoch: int) -> dict:
        # cursor: logical worker -> rows of its stream read; last: the worker of the last batch;
        # layout: (processes, workers) the cursors were taken with
        return {"epoch": epoch, "taken": 0, "cursor": {}, "last": None, "layout": None}

    def _own(self) -> dict:
        return {n: {**p, "cursor": dict(p["cursor"])} for n, p in self.position.items()}

    def state_dict(self) -> dict:
        """This process's positions, and every process's (collective: every rank calls it,
        as ``accelerator.save_state`` does; only the main process's file is written)."""
        own = self._own()
        ranks = gather_object([own]) if PartialState().num_processes > 1 else [own]
        return {"position": own, "per_rank": ranks}

    def load_state_dict(self, state: dict) -> None:
        ranks, ps = state.get("per_rank"), PartialState()
        own = ranks[ps.process_index] if ranks and len(ranks) == ps.num_processes else None
        # another process count: rank 0's positions (a stream's layout check then restarts it)
        own = own or state["position"]
        self.position = {n: {**self._start(0), **p} for n, p in own.items()}
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
        if not pos["taken"]:
            return iter(loader)
        data = getattr(getattr(loader, "dataset", None), "data", None)
        if pos["cursor"] and hasattr(data, "skip"):  # a tar-shard stream: its workers' cursors
            workers = max(getattr(loader, "num_workers", 0), 1)
            layout = [PartialState().num_processes, workers]
            if pos["layout"] is not None and list(pos["layout"]) != layout:
                # shards are dealt out by (process, worker): other counts, other streams
                logger.warning(
                    "source %r was checkpointed with %d process(es) x %d worker(s) and resumes "
                    "with %d x %d: its stream restarts epoch %d (samples of it are seen again); "
                    "resume with the same counts for an exact continuation",
                    name,
                    *pos["layout"],
                    *layout,
                    pos["epoch"],
                )
                pos.update(taken=0, cursor={}, last=None)
                return iter(loader)
            data.skip(pos["cursor"], rotation=(pos["last"] + 1) % workers)
            return iter(loader)
        # resume mid-epoch: the seedable sampler replays this epoch's order (other streams:
        # their batches are read again and dropped)
        return iter(skip_first_batches(loader, pos["taken"]))

    def next(self, micro_step: int) -> tuple[str, dict[str, torch.Tensor]]:
        """``(source name, batch)`` for a micro-step."""
        name = self.choose(micro_step)
        if name not in self._iters:
            self._iters[name] = self._iterator(name)
        try:
            batch = next(self._iters[name])
        except StopIteration:
            self.position[name] = self._start(self.position[name]["epoch"] + 1)
            self._iters[name] = self._iterator(name)
            batch = next(self._iters[name])
        pos = self.position[name]
        pos["taken"] += 1
        if isinstance(batch, dict) and "__cursor__" in batch:
            worker, rows = batch.pop("__cursor__")
            pos["cursor"][int(worker)], pos["last"] = int(rows), int(worker)
            if pos["layout"] is None:
                workers = max(getattr(self.loaders[name], "num_workers", 0), 1)
                pos["layout"] = [PartialState().num_processes, workers]
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
