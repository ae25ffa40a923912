"""NLVR2 reader for the official layout (lil-lab/nlvr).

``<split>.json`` is JSON lines despite the extension; ``label`` is the string "True"/"False".
Images are ``images/<split>/[<directory>/]<split>-<set>-<pair>-img{0,1}.png`` where the
``directory`` bucket exists for train only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from PIL import Image

from onetower.data import keys
from onetower.data.collators import TextCollator, drop_skipped, text_and_pixels
from onetower.data.pipeline import MapDataset
from onetower.data.robust import SkipCounter, check_images, clean_text, decode_image
from onetower.data.sources import Source
from onetower.data.transforms import SeededTransform


def _image_paths(split: str, row: dict) -> tuple[str, str]:
    # identifier = split-set_id-pair_id-sentence_id; the images drop the sentence id.
    prefix = row["identifier"].rsplit("-", 1)[0]
    folder = f"images/{split}" + (f"/{row['directory']}" if row.get("directory") else "")
    return f"{folder}/{prefix}-img0.png", f"{folder}/{prefix}-img1.png"


def read_nlvr2(root: str | Path, split: str = "train") -> datasets.Dataset:
    """Read ``root/<split>.json`` into rows of ``identifier``, ``sentence``, ``label`` (bool),
    ``left_image`` and ``right_image`` (paths relative to ``root``; decode them with
    ``onetower.data.robust.decode_image(path, base_dir=root)``).

    Raises:
        ValueError: a label other than "True"/"False" (case-insensitive), naming the line.
    """
    rows = []
    path = Path(root) / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"NLVR2 split {split!r}: {path} does not exist")
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                label = str(row["label"]).lower()
                sentence = row["sentence"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not an NLVR2 record ({e!r})") from None
            if label not in ("true", "false"):
                raise ValueError(f"{path}:{n}: label {row['label']!r} is not True/False")
            left, right = _image_paths(split, row)
            rows.append(
                {
                    "identifier": row["identifier"],
                    "sentence": sentence,
                    "label": label == "true",
                    "left_image": left,
                    "right_image": right,
                }
            )
    return datasets.Dataset.from_list(rows)


class PairOfImagesDecoder:
    """An NLVR2 row -> ``text``, ``pixel_values`` `(2, C, H, W)` (left, right), ``label``.

    Each image gets its own augmentation seed (keyed by its path), so the left and right
    images are cropped independently but reproducibly.
    """

    def __init__(
        self, base_dir: str | Path, transform: Callable[[Image.Image], torch.Tensor], seed: int = 0
    ) -> None:
        self.base_dir, self.transform = Path(base_dir), SeededTransform(transform, seed)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        images = [
            self.transform(decode_image(row[c], self.base_dir), row[c])
            for c in ("left_image", "right_image")
        ]
        return {
            "text": clean_text(row["sentence"]),
            "pixel_values": torch.stack(images),  # (2, C, H, W)
            "label": int(row["label"]),
            "index": row["index"],
        }

    def set_epoch(self, epoch: int) -> None:
        self.transform.epoch = epoch


def build_nlvr2_dataset(
    root: str | Path,
    split: str,
    transform: Callable[[Image.Image], torch.Tensor],
    counter: SkipCounter | None = None,
    seed: int = 0,
) -> MapDataset:
    """NLVR2 ``split`` as a torch dataset of decoded examples.

    Raises:
        FileNotFoundError: the split file, or image files it references, are missing.
        ValueError: a line is not an NLVR2 record or has a label other than True/False.
    """
    rows = read_nlvr2(root, split)
    check_images(rows, root, ("left_image", "right_image"), "identifier")
    rows = rows.add_column("index", list(range(len(rows))))
    source = Source(rows, "pairs", None, "sentence", Path(root))
    return MapDataset(source, PairOfImagesDecoder(root, transform, seed), counter or SkipCounter())


class NLVR2Collator:
    """Statement + image pairs: ``input_ids``, ``attention_mask``, ``pixel_values``
    `(B, 2, C, H, W)`, ``labels`` long `(B,)` (1 = true) and ``example_index`` `(B,)`."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.text = TextCollator(tokenizer, max_length)

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
        if not (samples := drop_skipped(samples)):
            return {}
        batch = text_and_pixels(self.text, samples)
        batch[keys.LABELS] = torch.tensor([s["label"] for s in samples])
        batch[keys.EXAMPLE_INDEX] = torch.tensor([s["index"] for s in samples])
        return batch
