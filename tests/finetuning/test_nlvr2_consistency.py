"""NLVR2 consistency beside accuracy, against the official evaluation's grouping."""

from __future__ import annotations

import pytest

from onetower.finetuning.nlvr2 import NLVR2Task, consistency, statement_key


def reference(predictions: dict[str, str], examples: list[dict]) -> tuple[float, float]:
    """lil-lab/nlvr nlvr2/eval/metrics.py, re-expressed: the third identifier field (the image
    pair) is blanked to name the statement; labels compare case-insensitively."""
    correct, consistent = 0.0, {}
    for ex in examples:
        anon = ex["identifier"].split("-")
        anon[2] = ""
        anon = "-".join(anon)
        consistent.setdefault(anon, True)
        if predictions[ex["identifier"]].lower() == ex["label"].lower():
            correct += 1
        else:
            consistent[anon] = False
    return correct / len(examples), sum(consistent.values()) / len(consistent)


EXAMPLES = [  # statement dev-1--0 has 3 image pairs, dev-1--1 two, dev-2--0 one
    {"identifier": "dev-1-0-0", "label": "True"},
    {"identifier": "dev-1-1-0", "label": "False"},
    {"identifier": "dev-1-2-0", "label": "True"},
    {"identifier": "dev-1-0-1", "label": "False"},
    {"identifier": "dev-1-1-1", "label": "False"},
    {"identifier": "dev-2-0-0", "label": "True"},
]


def test_consistency_groups_image_pairs_of_one_sentence(tmp_path) -> None:
    assert statement_key("dev-850-2-0") == "dev-850--0"
    preds = ["True", "False", "False", "False", "False", "True"]  # one pair of dev-1--0 wrong
    acc, cons = reference(
        dict(zip([e["identifier"] for e in EXAMPLES], preds, strict=True)), EXAMPLES
    )
    assert (acc, cons) == pytest.approx((5 / 6, 2 / 3))
    labels = [int(e["label"] == "True") for e in EXAMPLES]
    annotations = {"identifier": [e["identifier"] for e in EXAMPLES], "label": labels}
    got = NLVR2Task.score(dict(enumerate(preds)), annotations, tmp_path / "predictions_dev")
    assert got["nlvr2_acc"] == pytest.approx(100 * acc)
    assert got["nlvr2_consistency"] == pytest.approx(100 * cons)
    assert consistency(annotations["identifier"], [True] * 6) == 100.0
    # every statement has a wrong pair -> 0 consistency with 50% accuracy
    assert consistency(annotations["identifier"], [True, False, True, False, True, False]) == 0.0
    with pytest.raises(ValueError, match="split-set-pair-sentence"):
        statement_key("dev-850-0")
