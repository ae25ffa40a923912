"""NLVR2 reader for the official layout (lil-lab/nlvr).

``<split>.json`` is JSON lines despite the extension; ``label`` is the string "True"/"False".
Images are ``images/<split>/[<directory>/]<split>-<set>-<pair>-img{0,1}.png`` where the
``directory`` bucket exists for train only.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets


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
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            label = str(row["label"]).lower()
            if label not in ("true", "false"):
                raise ValueError(f"{path}:{n}: label {row['label']!r} is not True/False")
            left, right = _image_paths(split, row)
            rows.append(
                {
                    "identifier": row["identifier"],
                    "sentence": row["sentence"],
                    "label": label == "true",
                    "left_image": left,
                    "right_image": right,
                }
            )
    return datasets.Dataset.from_list(rows)
