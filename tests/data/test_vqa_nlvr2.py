"""VQA v2 and NLVR2 files round-trip through the readers; the VQA score matches its definition."""

from __future__ import annotations

import json
from collections import Counter
from itertools import combinations

import pytest

from onetower.data import (
    answer_vocab,
    build_dataset,
    build_image_transform,
    read_nlvr2,
    read_vqa,
    soft_targets,
    vqa_score,
)
from onetower.data.world import COLOURS


def test_vqa_round_trip(world):
    root = world.vqa_dir
    qs = json.loads((root / "v2_OpenEnded_mscoco_train2014_questions.json").read_text())
    anns = json.loads((root / "v2_mscoco_train2014_annotations.json").read_text())
    assert {"info", "task_type", "data_type", "data_subtype", "questions", "license"} <= set(qs)
    src = read_vqa(root, "train2014")
    rows = list(src.dataset)
    assert [r["question_id"] for r in rows] == [q["question_id"] for q in qs["questions"]]
    by_id = {a["question_id"]: a for a in anns["annotations"]}
    for r in rows:
        a = by_id[r["question_id"]]
        assert r["answers"] == [x["answer"] for x in a["answers"]] and len(r["answers"]) == 10
        assert r["answer_type"] in ("yes/no", "number", "other")
        assert r["multiple_choice_answer"] == Counter(r["answers"]).most_common(1)[0][0]
    colour_rows = [r for r in rows if r["question"].startswith("what colour")]
    assert colour_rows and all(r["multiple_choice_answer"] in COLOURS for r in colour_rows)
    assert {r["answer_type"] for r in rows} == {"yes/no", "number", "other"}
    ds = build_dataset(src, build_image_transform(32, False))
    sample = ds[0]
    assert sample["text"] == rows[0]["question"] and sample["image_id"] == rows[0]["image_id"]
    assert ds.counter.skipped == 0
    val = read_vqa(root, "val2014")
    assert set(val.dataset["image_id"]).isdisjoint(src.dataset["image_id"])


@pytest.mark.parametrize("n", range(11))
def test_vqa_score_is_leave_one_out_mean(n):
    gt = ["x"] * n + ["y"] * (10 - n)
    reference = (
        sum(min(1.0, sum(a == "x" for a in others) / 3) for others in combinations(gt, 9)) / 10
    )
    assert vqa_score(n) == pytest.approx(reference)


def test_answer_vocab_and_soft_targets():
    lists = [["red"] * 9 + ["blue"], ["red"] * 10, ["2"] * 3 + ["3"] * 7]
    vocab = answer_vocab(lists, min_count=2)
    assert vocab == ["red"]
    index = {a: i for i, a in enumerate(answer_vocab(lists, min_count=1))}
    assert soft_targets(lists[0], index) == {index["red"]: 1.0, index["blue"]: 0.3}


def test_nlvr2_round_trip(world, tmp_path):
    for split, n in (("train", world.spec.nlvr2_train), ("dev", world.spec.nlvr2_val)):
        ds = read_nlvr2(world.nlvr2_dir, split)
        raw = [json.loads(x) for x in (world.nlvr2_dir / f"{split}.json").open()]
        assert len(ds) == n and ds["identifier"] == [r["identifier"] for r in raw]
        assert ds["label"] == [r["label"] == "True" for r in raw]
        for row in ds:
            assert (world.nlvr2_dir / row["left_image"]).is_file()
            assert (world.nlvr2_dir / row["right_image"]).is_file()
    labels = read_nlvr2(world.nlvr2_dir, "train")["label"]
    assert 0.25 < sum(labels) / len(labels) < 0.75
    # Official train rows carry a `directory` bucket; labels must be the strings True/False.
    line = {"identifier": "train-7-1-0", "sentence": "s", "label": "False", "directory": 42}
    (tmp_path / "train.json").write_text(json.dumps(line) + "\n")
    row = read_nlvr2(tmp_path, "train")[0]
    assert row["left_image"] == "images/train/42/train-7-1-img0.png" and row["label"] is False
    (tmp_path / "train.json").write_text(json.dumps(line | {"label": "maybe"}) + "\n")
    with pytest.raises(ValueError, match="train.json:1"):
        read_nlvr2(tmp_path, "train")


def test_vqa_test_dev_reads_test2015_images(world, tmp_path):
    """test-dev's questions name test2015 images (the official layout has no test-dev folder)."""
    q = json.loads((world.vqa_dir / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    (tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(json.dumps(q))
    src = read_vqa(tmp_path, "test-dev2015")
    image_id = q["questions"][0]["image_id"]
    assert src.dataset[0]["image"] == f"test2015/COCO_test2015_{image_id:012d}.jpg"
    assert src.dataset[0]["answers"] == []  # no annotations for test subtypes
    with pytest.raises(FileNotFoundError, match="test2015_questions"):
        read_vqa(tmp_path, "test2015")
