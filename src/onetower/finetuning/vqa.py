"""VQA v2 fine-tuning (ViLT's recipe): answer vocabulary from the training annotations, soft
targets from the ten human answers, BCE, scored with the official VQA accuracy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets
import torch
from omegaconf import DictConfig

from onetower.data import SkipCounter, answer_vocab, build_dataset, keys, read_vqa
from onetower.data.robust import check_images
from onetower.data.vqa import VQACollator, add_targets
from onetower.finetuning.spec import TaskData, inputs, labels_match, limit
from onetower.finetuning.vqa_metric import VARIANTS, evaluate_vqa, normalize_answer, write_results
from onetower.task_models import OneTowerForQuestionAnswering, TaskModel
from onetower.training.config import ConfigError


def read_splits(root: Path, splits: str) -> Any:
    """One VQA subtype, or several joined with "+" (``train2014+val2014``) as one source."""
    names = [n for n in splits.split("+") if n]
    sources = [read_vqa(root, n) for n in names]
    if len(sources) == 1:
        return sources[0]
    joined = datasets.concatenate_datasets([s.dataset for s in sources])
    ids = joined["question_id"]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"task.train_split {splits!r}: the splits share question ids")
    return replace(sources[0], dataset=joined)


class VQATask:
    """VQA v2: answer vocabulary from the training annotations, soft-score BCE, VQA accuracy."""

    name = "vqa"
    model_class = OneTowerForQuestionAnswering
    default_train, default_eval = "train2014", ["val2014"]

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
        if t.vqa_metric not in VARIANTS:
            raise ConfigError(f"task.vqa_metric must be one of {VARIANTS}, got {t.vqa_metric!r}")
        train = read_splits(root, t.train_split or self.default_train)
        check_images(train.dataset, root, ("image",), "question_id")
        # ViLT's vocabulary: the normalised multiple-choice answer of each question of the
        # vocabulary splits ("Two" and "2" are one label), kept if it occurs for >=
        # min_answer_count questions (ViLT: 9, counted over VQA v2 train + val: 3,129)
        counted = read_splits(root, t.vocab_splits) if t.vocab_splits else train
        chosen = ([normalize_answer(a)] for a in counted.dataset["multiple_choice_answer"] if a)
        vocab = answer_vocab(chosen, t.min_answer_count)
        if not vocab:
            raise ConfigError(
                f"no answer occurs for >= task.min_answer_count={t.min_answer_count} questions"
            )
        id2label = dict(enumerate(vocab))
        if init_labels is not None:
            if cfg.train.max_steps > 0:
                labels_match(init_labels, id2label, cfg.init)
            id2label = init_labels  # evaluation only: score with the checkpoint's answers
        vocab = [id2label[i] for i in range(len(id2label))]
        train_set = build_dataset(
            add_targets(train, vocab, True, normalize_answer),
            transforms["train"],
            counter,
            cfg.run.seed,
        )
        evals, annotations = {}, {}
        for split in t.eval_splits or self.default_eval:
            src = read_vqa(root, split)
            check_images(src.dataset, root, ("image",), "question_id")
            src = limit(src, cfg.eval.max_samples)
            evals[split] = build_dataset(
                add_targets(src, vocab, False, normalize_answer),
                transforms["eval"],
                counter,
                cfg.run.seed,
            )
            rows = [r for r in src.dataset.remove_columns("image") if r["answers"]]
            annotations[split] = {"rows": rows, "variant": t.vqa_metric}
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
    def score(predictions: dict[int, str], annotations: dict, out: Path) -> dict[str, float]:
        """VQA accuracy (official metric, ``task.vqa_metric``'s version) overall and per answer
        type; writes the results file. ``vqa_metric_master`` is 1 when the current official
        code scored it, 0 for the pre-2021 code (a run's numbers say which they are)."""
        write_results(out.with_suffix(".json"), predictions)
        rows, variant = annotations["rows"], annotations["variant"]
        if not rows:  # test splits have no answers: predictions only
            return {}
        answered = {r["question_id"] for r in rows}
        # a question whose image failed to decode has no prediction: it scores 0
        missing = answered - set(predictions)
        result = evaluate_vqa({**dict.fromkeys(missing, ""), **predictions}, rows, variant)
        flat = {"vqa_acc": result.overall, "vqa_metric_master": float(variant == "master")}
        flat |= {f"vqa_acc_{k.replace('/', '_')}": v for k, v in result.per_answer_type.items()}
        return flat | ({"unanswered": float(len(missing))} if missing else {})
