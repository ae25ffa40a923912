"""Image-text retrieval splits as the papers use them: images grouped with their captions.

Two published layouts are read as they are distributed:

- Karpathy's split files (``dataset_coco.json``, ``dataset_flickr30k.json``, from the
  NeuralTalk release): ``{"dataset": ..., "images": [{"filename", "filepath"?, "split",
  "imgid", "sentences": [{"raw", "tokens", "sentid", "imgid"}, ...], "cocoid"?}, ...]}``,
  ``split`` one of ``train`` / ``val`` / ``test`` / ``restval`` (COCO's extra training images).
  COCO images live under ``<image_root>/<filepath>/<filename>`` (``val2014/COCO_val2014_...``),
  Flickr30K's under ``<image_root>/<filename>``. The 5k / 1k test sets of the papers are
  ``split="test"``.
- COCO's captions annotations (``captions_val2014.json``: ``images`` with ``id`` and
  ``file_name``, ``annotations`` with ``image_id`` and ``caption``).

Either gives a :class:`RetrievalSplit`: images in file order, captions flattened image by
image, and each caption's image index: what :mod:`onetower.evaluation.retrieval` scores (a text
query's hit is its own image; an image query's hit is any of its captions).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

KARPATHY_SPLITS = ("train", "val", "test", "restval")


@dataclass(frozen=True)
class RetrievalSplit:
    """Images and their grouped captions.

    Attributes:
        image_paths: one path per image.
        image_ids: the image's id in the source (COCO id, Flickr file stem, Karpathy imgid).
        captions: every caption, image by image.
        caption_image: index into ``image_paths`` of each caption's image.
    """

    image_paths: list[Path]
    image_ids: list[str]
    captions: list[str]
    caption_image: list[int]

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.caption_image):
            raise ValueError("captions and caption_image differ in length")
        if len(self.image_paths) != len(self.image_ids):
            raise ValueError("image_paths and image_ids differ in length")
        if any(not 0 <= i < len(self.image_paths) for i in self.caption_image):
            raise ValueError("caption_image points outside the images")

    @property
    def captions_per_image(self) -> list[list[int]]:
        """Caption indices of each image."""
        out: list[list[int]] = [[] for _ in self.image_paths]
        for t, i in enumerate(self.caption_image):
            out[i].append(t)
        return out

    def head(self, n_images: int) -> RetrievalSplit:
        """The first ``n_images`` images with all their captions."""
        keep = [
            (c, i) for c, i in zip(self.captions, self.caption_image, strict=True) if i < n_images
        ]
        return RetrievalSplit(
            self.image_paths[:n_images],
            self.image_ids[:n_images],
            [c for c, _ in keep],
            [i for _, i in keep],
        )


def read_karpathy(
    path: str | Path,
    split: str | tuple[str, ...] = "test",
    image_root: str | Path | None = None,
    max_captions: int | None = None,
) -> RetrievalSplit:
    """Read a Karpathy split file (COCO or Flickr30K).

    Args:
        path: ``dataset_coco.json`` / ``dataset_flickr30k.json``.
        split: one split name or several (``("train", "restval")`` = COCO's 113k training set).
        image_root: folder the image paths are relative to; default: the file's folder.
        max_captions: keep at most this many captions per image (COCO has a few images with
            6 or 7; the papers keep them all, so None = all).

    Raises:
        FileNotFoundError / ValueError: a missing file, another layout, an unknown split or a
            split with no images (each message names the file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Karpathy split file {path} does not exist")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path} is not a Karpathy split file (no 'images' list)")
    splits = (split,) if isinstance(split, str) else tuple(split)
    if unknown := [s for s in splits if s not in KARPATHY_SPLITS]:
        raise ValueError(f"split {unknown} of {path}: Karpathy splits are {KARPATHY_SPLITS}")
    root = Path(image_root) if image_root is not None else path.parent
    paths, ids, captions, owner = [], [], [], []
    for entry in data["images"]:
        if entry.get("split") not in splits:
            continue
        if "filename" not in entry or not entry.get("sentences"):
            raise ValueError(f"{path}: image entry {entry.get('imgid')} lacks filename/sentences")
        sub = entry.get("filepath", "")
        paths.append(root / sub / entry["filename"] if sub else root / entry["filename"])
        ids.append(str(entry.get("cocoid", Path(entry["filename"]).stem)))
        for sent in entry["sentences"][:max_captions]:
            captions.append(sent["raw"].strip())
            owner.append(len(paths) - 1)
    if not paths:
        raise ValueError(f"{path} has no images in split {list(splits)}")
    return RetrievalSplit(paths, ids, captions, owner)


def read_coco_captions(path: str | Path, image_root: str | Path) -> RetrievalSplit:
    """Read COCO's captions annotations (``captions_{train,val}2014.json``) grouped by image.

    Images keep the file's order; an image without captions is dropped (it could never be
    retrieved by a text, and has no hit as a query).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"COCO captions file {path} does not exist")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
        raise ValueError(f"{path} is not a COCO captions file (needs 'images' and 'annotations')")
    by_image: dict[int, list[str]] = defaultdict(list)
    for ann in data["annotations"]:
        by_image[int(ann["image_id"])].append(str(ann["caption"]).strip())
    paths, ids, captions, owner = [], [], [], []
    for img in data["images"]:
        caps = by_image.get(int(img["id"]))
        if not caps:
            continue
        paths.append(Path(image_root) / img["file_name"])
        ids.append(str(img["id"]))
        captions += caps
        owner += [len(paths) - 1] * len(caps)
    if not paths:
        raise ValueError(f"{path} has no image with a caption")
    return RetrievalSplit(paths, ids, captions, owner)


def write_karpathy(path: str | Path, dataset: str, images: list[dict]) -> Path:
    """Write a Karpathy-layout split file (the synthetic world and tests use it).

    Args:
        path: destination JSON.
        dataset: the ``dataset`` field (``"coco"``, ``"flickr30k"``, ``"synthetic"``).
        images: ``{"filename", "split", "sentences": [str, ...], "filepath"?}`` per image.
    """
    rows, sentid = [], 0
    for imgid, img in enumerate(images):
        sentences = []
        for raw in img["sentences"]:
            tokens = raw.lower().replace(".", " ").split()
            sentences.append({"tokens": tokens, "raw": raw, "imgid": imgid, "sentid": sentid})
            sentid += 1
        row = {
            "filename": img["filename"],
            "imgid": imgid,
            "split": img["split"],
            "sentences": sentences,
            "sentids": [s["sentid"] for s in sentences],
        }
        if img.get("filepath"):
            row["filepath"] = img["filepath"]
        rows.append(row)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": rows, "dataset": dataset}), encoding="utf-8")
    return path
