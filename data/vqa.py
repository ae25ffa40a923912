"""VQA v2 reader for the official file layout, answer vocabulary and soft scores.

Files (visualqa.org): ``v2_OpenEnded_mscoco_<subtype>_questions.json``,
``v2_mscoco_<subtype>_annotations.json`` (absent for test), images
``<subtype>/COCO_<subtype>_<12-digit image_id>.jpg``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import datasets

from onetower.data.sources import Source


def vqa_score(num_matching: int) -> float:
    """Official VQA accuracy of an answer given by ``num_matching`` of the 10 annotators.

    Closed form of the mean over the 10 leave-one-out subsets of min(1, matches / 3).
    """
    return (0.0, 0.3, 0.6, 0.9)[num_matching] if num_matching < 4 else 1.0


def read_vqa(root: str | Path, subtype: str = "train2014") -> Source:
    """Read one VQA v2 subtype into a pairs ``Source`` (text = question).

    Rows: ``question_id``, ``image_id``, ``question``, ``image`` (path relative to ``root``),
    and from the annotations (empty for test subtypes) ``answers`` (10 strings),
    ``multiple_choice_answer``, ``answer_type``, ``question_type``.
    """
    root = Path(root)
    questions = json.loads((root / f"v2_OpenEnded_mscoco_{subtype}_questions.json").read_text())
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
                "image": f"{subtype}/COCO_{subtype}_{q['image_id']:012d}.jpg",
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

    The VQA v2 convention (3,129 answers) counts ``multiple_choice_answer`` per question;
    here every distinct answer of a question counts once, which includes those.
    """
    counts = Counter(a for answers in answer_lists for a in set(answers))
    return sorted((a for a, n in counts.items() if n >= min_count), key=lambda a: (-counts[a], a))


def soft_targets(answers: list[str], vocab_index: dict[str, int]) -> dict[int, float]:
    """Soft target per in-vocabulary answer: ``vqa_score(#annotators who gave it)``."""
    return {vocab_index[a]: vqa_score(n) for a, n in Counter(answers).items() if a in vocab_index}
