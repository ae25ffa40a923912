"""NLVR2 fine-tuning: a statement about two images, true or false (ViLT's pair method, or
UNITER's triplet with ``task.multi_image_method=triplet``); accuracy per split."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from onetower.data import SkipCounter, keys
from onetower.data.nlvr2 import NLVR2Collator, build_nlvr2_dataset
from onetower.finetuning.spec import TaskData, inputs
from onetower.task_models import OneTowerForImagesAndTextClassification, TaskModel
from onetower.training.config import ConfigError

NLVR2_LABELS = {0: "False", 1: "True"}


class NLVR2Task:
    """NLVR2 with ViLT's pair method: accuracy on each eval split."""

    name = "nlvr2"
    model_class = OneTowerForImagesAndTextClassification
    default_train, default_eval = "train", ["dev"]

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
        t, counter = cfg.task, SkipCounter(max_bad_fraction=cfg.data.max_bad_fraction)
        seed = cfg.run.seed
        train = build_nlvr2_dataset(
            root, t.train_split or self.default_train, transforms["train"], counter, seed
        )
        evals, annotations = {}, {}
        for split in t.eval_splits or self.default_eval:
            ds = build_nlvr2_dataset(root, split, transforms["eval"], counter, seed)
            if cfg.eval.max_samples:
                ds.data = ds.data.select(range(min(cfg.eval.max_samples, len(ds.data))))
            evals[split] = ds
            annotations[split] = {"identifier": ds.data["identifier"], "label": ds.data["label"]}
        if init_labels is not None and init_labels != NLVR2_LABELS:
            raise ConfigError(f"{cfg.init} has labels {init_labels}, NLVR2 needs {NLVR2_LABELS}")
        return TaskData(
            train, evals, NLVR2_LABELS, NLVR2Collator(tokenizer, max_len), annotations, counter
        )

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
        correct = [predictions.get(i) == NLVR2_LABELS[int(y)] for i, y in enumerate(labels)]
        return {
            "nlvr2_acc": 100.0 * sum(correct) / max(len(ids), 1),
            "nlvr2_consistency": consistency(ids, correct),
        }


def statement_key(identifier: str) -> str:
    """The statement an example belongs to, as the official NLVR2 evaluation
    (``nlvr2/eval/metrics.py``) groups them: identifiers are ``split-set-pair-sentence``
    (``dev-850-2-0``) and the *pair* field is blanked (``dev-850--0``), so the image pairs one
    sentence was written for are one statement."""
    parts = identifier.split("-")
    if len(parts) != 4:
        raise ValueError(f"NLVR2 identifier {identifier!r} is not split-set-pair-sentence")
    parts[2] = ""
    return "-".join(parts)


def consistency(identifiers: list[str], correct: list[bool]) -> float:
    """NLVR2 consistency (%): the share of statements whose every image pair is right."""
    every: dict[str, bool] = {}
    for ident, ok in zip(identifiers, correct, strict=True):
        key = statement_key(ident)
        every[key] = every.get(key, True) and bool(ok)
    return 100.0 * sum(every.values()) / max(len(every), 1)
