"""Fine-tuning tasks: what differs between VQA v2 and NLVR2 (data, labels, model, metric).

A task builds its training and evaluation datasets from a folder in the official layout
(the synthetic world writes both), says which model class it trains, and scores predictions.
The loop in :mod:`onetower.training.finetune` is shared.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from onetower.data import SkipCounter, answer_vocab, build_dataset, keys, read_vqa
from onetower.data.nlvr2 import NLVR2Collator, build_nlvr2_dataset
from onetower.data.robust import check_images
from onetower.data.vqa import VQACollator, add_targets
from onetower.task_models import (
    OneTowerForImagesAndTextClassification,
    OneTowerForQuestionAnswering,
    TaskModel,
)
from onetower.training.config import ConfigError
from onetower.training.vqa_eval import evaluate_vqa, normalize_answer, write_results

NLVR2_LABELS = {0: "False", 1: "True"}


@dataclass
class TaskData:
    """A task's datasets and labels."""

    train: torch.utils.data.Dataset
    evals: dict[str, torch.utils.data.Dataset]
    id2label: dict[int, str]
    collate: Callable[[list], dict[str, torch.Tensor]]
    annotations: dict[str, Any]  # per eval split: what the metric needs (VQA answer rows)
    counter: SkipCounter


def _labels_match(checkpoint: dict[int, str], data: dict[int, str], init: str) -> None:
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


class VQATask:
    """VQA v2: answer vocabulary from the training annotations, soft-score BCE, VQA accuracy."""

    name = "vqa"
    model_class = OneTowerForQuestionAnswering
    default_train, default_eval = "train2014", ["val2014"]

    def build(self, cfg: DictConfig, root: Path, tokenizer: Any, image_size: int,
              max_len: int, transforms: dict, init_labels: dict[int, str] | None) -> TaskData:  # fmt: skip
        t, counter = cfg.task, SkipCounter(max_bad_fraction=cfg.data.max_bad_fraction)
        train = read_vqa(root, t.train_split or self.default_train)
        check_images(train.dataset, root, ("image",), "question_id")
        # ViLT's vocabulary: the normalised multiple-choice answer of each training question
        # ("Two" and "2" are one label), kept if it occurs for >= min_answer_count questions
        # (ViLT: 9, counted over VQA v2 train + val, gives 3,129)
        chosen = ([normalize_answer(a)] for a in train.dataset["multiple_choice_answer"] if a)
        vocab = answer_vocab(chosen, t.min_answer_count)
        if not vocab:
            raise ConfigError(
                f"no answer occurs for >= task.min_answer_count={t.min_answer_count} questions"
            )
        id2label = dict(enumerate(vocab))
        if init_labels is not None:
            if cfg.train.max_steps > 0:
                _labels_match(init_labels, id2label, cfg.init)
            id2label = init_labels  # evaluation only: score with the checkpoint's answers
        vocab = [id2label[i] for i in range(len(id2label))]
        train_set = build_dataset(add_targets(train, vocab, True, normalize_answer),
                                  transforms["train"], counter, cfg.run.seed)  # fmt: skip
        evals, annotations = {}, {}
        for split in t.eval_splits or self.default_eval:
            src = read_vqa(root, split)
            check_images(src.dataset, root, ("image",), "question_id")
            src = _limit(src, cfg.eval.max_samples)
            evals[split] = build_dataset(add_targets(src, vocab, False, normalize_answer),
                                         transforms["eval"], counter, cfg.run.seed)  # fmt: skip
            annotations[split] = [r for r in src.dataset.remove_columns("image") if r["answers"]]
        collate = VQACollator(tokenizer, max_len, len(vocab))
        return TaskData(train_set, evals, id2label, collate, annotations, counter)

    @staticmethod
    def predict(model: TaskModel, batch: dict[str, torch.Tensor]) -> dict[int, str]:
        logits = model(**inputs(batch)).logits  # (B, A)
        labels = model.config.id2label
        return {
            int(q): labels[int(a)]
            for q, a in zip(
                batch[keys.QUESTION_IDS].tolist(), logits.argmax(-1).tolist(), strict=True
            )
        }

    @staticmethod
    def score(predictions: dict[int, str], annotations: list[dict], out: Path) -> dict[str, float]:
        """VQA accuracy (official metric) overall and per answer type; writes the results file."""
        write_results(out.with_suffix(".json"), predictions)
        if not annotations:  # test splits have no answers: predictions only
            return {}
        answered = {r["question_id"] for r in annotations}
        # a question whose image failed to decode has no prediction: it scores 0
        missing = answered - set(predictions)
        result = evaluate_vqa({**dict.fromkeys(missing, ""), **predictions}, annotations)
        flat = {"vqa_acc": result.overall}
        flat |= {f"vqa_acc_{k.replace('/', '_')}": v for k, v in result.per_answer_type.items()}
        return flat | ({"unanswered": float(len(missing))} if missing else {})


class NLVR2Task:
    """NLVR2 with ViLT's pair method: accuracy on each eval split."""

    name = "nlvr2"
    model_class = OneTowerForImagesAndTextClassification
    default_train, default_eval = "train", ["dev"]

    def build(self, cfg: DictConfig, root: Path, tokenizer: Any, image_size: int,
              max_len: int, transforms: dict, init_labels: dict[int, str] | None) -> TaskData:  # fmt: skip
        t, counter = cfg.task, SkipCounter(max_bad_fraction=cfg.data.max_bad_fraction)
        seed = cfg.run.seed
        train = build_nlvr2_dataset(root, t.train_split or self.default_train,
                                    transforms["train"], counter, seed)  # fmt: skip
        evals, annotations = {}, {}
        for split in t.eval_splits or self.default_eval:
            ds = build_nlvr2_dataset(root, split, transforms["eval"], counter, seed)
            if cfg.eval.max_samples:
                ds.data = ds.data.select(range(min(cfg.eval.max_samples, len(ds.data))))
            evals[split] = ds
            annotations[split] = {"identifier": ds.data["identifier"], "label": ds.data["label"]}
        if init_labels is not None and init_labels != NLVR2_LABELS:
            raise ConfigError(f"{cfg.init} has labels {init_labels}, NLVR2 needs {NLVR2_LABELS}")
        return TaskData(train, evals, NLVR2_LABELS, NLVR2Collator(tokenizer, max_len),
                        annotations, counter)  # fmt: skip

    @staticmethod
    def predict(model: TaskModel, batch: dict[str, torch.Tensor]) -> dict[int, str]:
        logits = model(**inputs(batch)).logits  # (B, 2)
        return {
            int(i): NLVR2_LABELS[int(c)]
            for i, c in zip(
                batch[keys.EXAMPLE_INDEX].tolist(), logits.argmax(-1).tolist(), strict=True
            )
        }

    @staticmethod
    def score(predictions: dict[int, str], annotations: dict, out: Path) -> dict[str, float]:
        """Accuracy (a failed example counts as wrong); writes ``identifier,prediction`` CSV
        lines as the NLVR2 leaderboard takes them."""
        ids, labels = annotations["identifier"], annotations["label"]
        tmp = out.with_suffix(".csv.tmp")
        with open(tmp, "w") as f:
            for i, ident in enumerate(ids):
                f.write(f"{ident},{predictions.get(i, 'False')}\n")
        os.replace(tmp, out.with_suffix(".csv"))
        correct = sum(predictions.get(i) == NLVR2_LABELS[int(y)] for i, y in enumerate(labels))
        return {"nlvr2_acc": 100.0 * correct / max(len(ids), 1)}


TASKS = {"vqa": VQATask(), "nlvr2": NLVR2Task()}


def inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's arguments from a task batch (ids used for bookkeeping are left out)."""
    names = (keys.INPUT_IDS, keys.ATTENTION_MASK, keys.PIXEL_VALUES, keys.LABELS)
    return {k: batch[k] for k in names if k in batch}


def _limit(source: Any, n: int) -> Any:
    if not n or len(source.dataset) <= n:
        return source
    return replace(source, dataset=source.dataset.select(range(n)))


def task_summary(metrics: dict[str, float]) -> str:
    """One line of the headline metrics, e.g. ``val2014 vqa_acc 93.1``."""
    return ", ".join(f"{k} {v:.1f}" for k, v in metrics.items() if k.endswith("_acc"))


def dump_json(path: Path, obj: Any) -> None:
    """Write JSON atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
