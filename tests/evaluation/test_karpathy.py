"""Karpathy split files and COCO captions read as published, grouped by image."""

from __future__ import annotations

import json

import pytest

from onetower.data.karpathy import read_coco_captions, read_karpathy, write_karpathy
from onetower.evaluation.zero_shot import read_retrieval_split


def _coco_file(tmp_path):
    # the published dataset_coco.json layout (fields as released with NeuralTalk)
    def image(imgid, cocoid, split, n):
        sents = [
            {
                "tokens": ["a", "cat", str(j)],
                "raw": f"A cat {j}.",
                "imgid": imgid,
                "sentid": 10 * imgid + j,
            }
            for j in range(n)
        ]
        return {
            "filepath": "val2014",
            "sentids": [s["sentid"] for s in sents],
            "filename": f"COCO_val2014_{cocoid:012d}.jpg",
            "imgid": imgid,
            "split": split,
            "sentences": sents,
            "cocoid": cocoid,
        }

    data = {
        "images": [image(0, 42, "test", 5), image(1, 7, "train", 5), image(2, 9, "test", 6)],
        "dataset": "coco",
    }
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_karpathy_file_groups_captions_by_image(tmp_path) -> None:
    path = _coco_file(tmp_path)
    split = read_karpathy(path, "test", image_root=tmp_path / "images")
    assert split.image_ids == ["42", "9"]
    assert split.image_paths[0] == tmp_path / "images" / "val2014" / "COCO_val2014_000000000042.jpg"
    assert len(split.captions) == 11  # 5 + 6: COCO keeps an image's extra captions
    assert split.caption_image == [0] * 5 + [1] * 6
    assert split.captions[0] == "A cat 0."
    assert split.captions_per_image[1] == list(range(5, 11))
    assert len(read_karpathy(path, ("train", "test")).image_paths) == 3
    assert read_karpathy(path, "test", max_captions=5).caption_image == [0] * 5 + [1] * 5
    assert split.head(1).caption_image == [0] * 5
    with pytest.raises(ValueError, match="Karpathy splits"):
        read_karpathy(path, "testing")
    with pytest.raises(ValueError, match="no images in split"):
        read_karpathy(path, "val")
    with pytest.raises(FileNotFoundError):
        read_karpathy(tmp_path / "missing.json")


def test_flickr_layout_has_no_filepath(tmp_path) -> None:
    images = [
        {"filename": "1000092795.jpg", "split": "test", "sentences": ["Two men .", "Guys ."]},
        {"filename": "10002456.jpg", "split": "train", "sentences": ["A dog ."]},
    ]
    path = write_karpathy(tmp_path / "dataset_flickr30k.json", "flickr30k", images)
    raw = json.loads(path.read_text())
    assert raw["dataset"] == "flickr30k" and "filepath" not in raw["images"][0]
    assert raw["images"][0]["sentences"][1] == {
        "tokens": ["guys"],
        "raw": "Guys .",
        "imgid": 0,
        "sentid": 1,
    }
    split = read_karpathy(path, "test", image_root="/data/flickr30k-images")
    assert str(split.image_paths[0]) == "/data/flickr30k-images/1000092795.jpg"
    assert split.image_ids == ["1000092795"] and split.caption_image == [0, 0]


def test_coco_captions_annotations(tmp_path) -> None:
    data = {
        "images": [
            {"id": 5, "file_name": "COCO_val2014_000000000005.jpg"},
            {"id": 3, "file_name": "COCO_val2014_000000000003.jpg"},
            {"id": 8, "file_name": "COCO_val2014_000000000008.jpg"},  # no caption: dropped
        ],
        "annotations": [
            {"image_id": 3, "id": 1, "caption": "a b "},
            {"image_id": 5, "id": 2, "caption": "c"},
            {"image_id": 3, "id": 3, "caption": "d"},
        ],
    }
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps(data))
    split = read_coco_captions(path, tmp_path)
    assert split.image_ids == ["5", "3"]
    assert split.captions == ["c", "a b", "d"] and split.caption_image == [0, 1, 1]
    # the evaluation recipe tells the two layouts apart
    assert read_retrieval_split(path, "test", str(tmp_path)).captions == split.captions
    assert read_retrieval_split(_coco_file(tmp_path), "test", None).image_ids == ["42", "9"]
