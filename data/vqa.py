"""VQA v2 reader for the official file layout, answer vocabulary and soft scores.

Files (visualqa.org): ``v2_OpenEnded_mscoco_<subtype>_questions.json``,
``v2_mscoco_<subtype>_annotations.json`` (absent for test), images
``<folder>/COCO_<folder>_<12-digit image_id>.jpg`` where the folder is the subtype, except for
test-dev: its questions are a subset of test2015's, whose images it uses
(``test2015/COCO_test2015_*.jpg``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch

from onetower.data import keys
from onetower.data.collators import TextCollator, drop_skipped, text_and_pixels
from onetower.data.sources import Source


def vqa_score(num_matching: int) -> float:
    """Official VQA accuracy of an answer given by ``num_matching`` of the 10 annotators.

    Closed form of the mean over the 10 leave-one-out subsets of min(1, matches / 3).
    """
    return (0.0, 0.3, 0.6, 0.9)[num_matching] if num_matching < 4 else 1.0


#: Subtypes whose images live in another subtype's folder (test-dev is part of test2015).
IMAGE_FOLDER = {"test-dev2015": "test2015"}


def read_vqa(root: str | Path, subtype: str = "train2014") -> Source:
    """Read one VQA v2 subtype into a pairs ``Source`` (text = question).

    Rows: ``question_id``, ``image_id``, ``question``, ``image`` (path relative to ``root``),
    and from the annotations (empty for test subtypes) ``answers`` (10 strings),
    ``multiple_choice_answer``, ``answer_type``, ``question_type``.
    """
    root = Path(root)
    q_path = root / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
    if not q_path.exists():
        raise FileNotFoundError(f"VQA subtype {subtype!r}: {q_path} does not exist")
    questions = json.loads(q_path.read_text())
    folder = IMAGE_FOLDER.get(subtype, subtype)
    ann_path = root / f"v2_mscoco_{subtype}_annotations.json"
    anns = {}
    if ann_path.exists():
        anns = {a["question_id"]: a for a in json.loads(ann_path.read_text())["annotations"]}
    rows = []
    for q in questions["questions"]:
        a = anns.get(q["question_id"], {})
        rows.append(
            {
                "question_id": q["question_id"],
                "image_id": q["image_id"],
                "question": q["question"],
                "image": f"{folder}/COCO_{folder}_{q['image_id']:012d}.jpg",
                "answers": [x["answer"] for x in a.get("answers", [])],
                "multiple_choice_answer": a.get("multiple_choice_answer", ""),
                "answer_type": a.get("answer_type", ""),
                "question_type": a.get("question_type", ""),
            }
        )
    ds = datasets.Dataset.from_list(rows)
    return Source(ds, "pairs", "image", "question", base_dir=root, key_column="image_id")


def answer_vocab(answer_lists: Iterable[list[str]], min_count: int = 9) -> list[str]:
    """Answers that occur for at least ``min_count`` questions, most frequent first.

    Each question's list counts each distinct answer once. The VQA v2 convention (ViLT, 3,129
    answers at ``min_count=9``) passes one list per question holding its normalised
    ``multiple_choice_answer``; passing all 10 annotator answers gives a larger vocabulary.
    """
    counts = Counter(a for answers in answer_lists for a in set(answers))
    return sorted((a for a, n in counts.items() if n >= min_count), key=lambda a: (-counts[a], a))


def soft_targets(answers: list[str], vocab_index: dict[str, int]) -> dict[int, float]:
    """Soft target per in-vocabulary answer: ``vqa_score(#annotators who gave it)``."""
    return {vocab_index[a]: vqa_score(n) for a, n in Counter(answers).items() if a in vocab_index}


def add_targets(
    source: Source, vocab: Sequence[str], drop_unanswerable: bool, normalize: Any = None
) -> Source:
    """Attach soft answer targets to each question (``target_ids``, ``target_scores``).

    Args:
        source: from :func:`read_vqa`.
        vocab: the answer vocabulary (label index = position).
        drop_unanswerable: drop questions with no in-vocabulary answer (ViLT's training rule;
            keep them for evaluation, where they simply score 0).
        normalize: optional ``str -> str`` applied to each annotator answer first (e.g. the
            official VQA normalisation), so targets match a vocabulary built the same way.
    """
    index = {a: i for i, a in enumerate(vocab)}

    def targets(row: dict) -> dict:
        answers = [normalize(a) for a in row["answers"]] if normalize else row["answers"]
        t = soft_targets(answers, index)
        return {"target_ids": list(t), "target_scores": list(t.values())}

    ds = source.dataset.map(targets)
    if drop_unanswerable:
        ds = ds.filter(lambda n: len(n) > 0, input_columns="target_ids")
    extra = ("question_id", "target_ids", "target_scores")
    return Source(
        ds,
        "pairs",
        source.image_column,
        source.text_column,
        source.base_dir,
        source.key_column,
        extra,
    )


class VQACollator:
    """Question + image batches with dense soft targets for BCE.

    Gives ``input_ids``, ``attention_mask``, ``pixel_values``, ``question_ids`` and, when the
    samples carry targets, ``labels`` float `(B, A)`.
    """

    def __init__(self, tokenizer: Any, max_length: int, num_answers: int) -> None:
        self.text = TextCollator(tokenizer, max_length)
        self.num_answers = num_answers

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
        if not (samples := drop_skipped(samples)):
            return {}
        batch = text_and_pixels(self.text, samples)
        batch[keys.QUESTION_IDS] = torch.tensor([s["question_id"] for s in samples])
        if "target_ids" in samples[0]:
            labels = torch.zeros(len(samples), self.num_answers)
            for row, s in enumerate(samples):
                labels[row, s["target_ids"]] = torch.tensor(s["target_scores"], dtype=torch.float)
            batch[keys.LABELS] = labels
        return batch
