"""What a fine-tuning task is made of: its datasets and labels (:class:`TaskData`), and the
protocol each task file (``vqa.py``, ``nlvr2.py``) implements: build the data from a folder in
the official layout, say which model class it trains, predict and score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import DictConfig

from onetower.data import SkipCounter, keys
from onetower.task_models import TaskModel
from onetower.training.config import ConfigError


@dataclass
class TaskData:
    """A task's datasets and labels."""

    train: torch.utils.data.Dataset
    evals: dict[str, torch.utils.data.Dataset]
    id2label: dict[int, str]
    collate: Callable[[list], dict[str, torch.Tensor]]
    annotations: dict[str, Any]  # per eval split: what the metric needs (VQA answer rows)
    counter: SkipCounter


class FinetuneSpec(Protocol):
    """One fine-tuning task (VQA v2, NLVR2, ...): one file in this folder, registered in
    :data:`onetower.finetuning.registry.TASKS`."""

    #: ``task.name`` in the config.
    name: str
    #: The task model class it trains (a ``TaskModel``).
    model_class: type[TaskModel]
    #: Split names when ``task.train_split`` / ``task.eval_splits`` are null.
    default_train: str
    default_eval: list[str]

    def build(
        self,
        cfg: DictConfig,
        root: Path,
        tokenizer: Any,
        image_size: int,
        max_len: int,
        transforms: dict,
        init_labels: dict[int, str] | None,
    ) -> TaskData:
        """Datasets, labels and collator from ``root``; ``init_labels``: the labels of a task
        checkpoint being trained further (kept, and checked against the data)."""
        ...

    def predict(self, model: TaskModel, batch: dict[str, torch.Tensor]) -> dict[int, str]:
        """Example id -> predicted label for one evaluation batch."""
        ...

    def score(self, predictions: dict[int, str], annotations: Any, out: Path) -> dict[str, float]:
        """The task's metrics (percentages); writes the predictions file ``out.<ext>``."""
        ...


def labels_match(checkpoint: dict[int, str], data: dict[int, str], init: str) -> None:
    """A task checkpoint trained further must keep its label indices."""
    if checkpoint == data:
        return
    ours, theirs = set(checkpoint.values()), set(data.values())
    raise ConfigError(
        f"the answer vocabulary of {init} ({len(checkpoint)} labels) does not match the one "
        f"built from the data ({len(data)} labels): only in the checkpoint "
        f"{sorted(ours - theirs)[:5]}, only in the data {sorted(theirs - ours)[:5]}"
        + ("" if ours != theirs else "; same answers in another order")
        + ". Use the same data and task.min_answer_count, or fine-tune from the encoder"
    )


def inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's arguments from a task batch (ids used for bookkeeping are left out)."""
    names = (keys.INPUT_IDS, keys.ATTENTION_MASK, keys.PIXEL_VALUES, keys.LABELS)
    return {k: batch[k] for k in names if k in batch}


def limit(source: Any, n: int) -> Any:
    if not n or len(source.dataset) <= n:
        return source
    return replace(source, dataset=source.dataset.select(range(n)))


def task_summary(metrics: dict[str, float]) -> str:
    """One line of the headline metrics, e.g. ``val2014 vqa_acc 93.1``."""
    return ", ".join(f"{k} {v:.1f}" for k, v in metrics.items() if k.endswith("_acc"))
