"""Write the synthetic world to disk in the formats real data uses, and a CLI for it.

Layout under ``root``::

    pairs/{train,validation}/metadata.jsonl + NNNNNN.png     (datasets imagefolder)
    vqa/v2_OpenEnded_mscoco_{train2014,val2014}_questions.json
    vqa/v2_mscoco_{train2014,val2014}_annotations.json
    vqa/{train2014,val2014}/COCO_<subtype>_<12-digit id>.jpg
    nlvr2/{train,dev}.json (JSON lines) + nlvr2/images/{train,dev}/<id>-img{0,1}.png
    retrieval/dataset_synthetic.json + retrieval/images/NNNNNN.png   (Karpathy split file:
        images grouped with up to 5 captions each, splits "train" and "test")
    tokenizer/ (save_pretrained)   world.json (the spec, so a second call reuses the files)

Usage: ``python -m onetower.data.synthetic OUT --n-train 2000 --n-val 200 --image-size 64``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from onetower.data.karpathy import write_karpathy
from onetower.data.tokenizer import train_wordpiece_tokenizer
from onetower.data.world import SHAPES, WORLD_VERSION, caption, render, sample_scene
from onetower.data.world_tasks import NLVR2Example, nlvr2_example, questions, scene_captions

VQA_SUBTYPES = {"train": "train2014", "validation": "val2014"}
NLVR2_SPLITS = {"train": "train", "validation": "dev"}
RETRIEVAL_FILE = "dataset_synthetic.json"


@dataclass(frozen=True)
class WorldSpec:
    """What to generate; the same spec always gives byte-identical files."""

    seed: int = 0
    n_train: int = 2000
    n_val: int = 200
    image_size: int = 64
    vqa_train: int = 500
    vqa_val: int = 100
    nlvr2_train: int = 500
    nlvr2_val: int = 100
    #: the grouped-caption retrieval split (Karpathy layout): training and test images
    retrieval_train: int = 500
    retrieval_test: int = 200
    vocab_size: int = 512
    text_length: int = 32
    #: how scenes are drawn; a world written by another version is never reused
    version: int = WORLD_VERSION


@dataclass(frozen=True)
class SyntheticWorld:
    """Paths of a written world."""

    root: Path
    spec: WorldSpec

    @property
    def pairs_dir(self) -> Path:
        return self.root / "pairs"

    def split_dir(self, split: str) -> Path:
        return self.pairs_dir / split

    @property
    def vqa_dir(self) -> Path:
        return self.root / "vqa"

    @property
    def nlvr2_dir(self) -> Path:
        return self.root / "nlvr2"

    @property
    def retrieval_file(self) -> Path:
        """The Karpathy-layout split file of the grouped-caption retrieval split."""
        return self.root / "retrieval" / RETRIEVAL_FILE

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"


def _rng(seed: int, *parts: str) -> random.Random:
    # String seeds are hashed with SHA-512 by `random`, so this is stable across processes.
    return random.Random("/".join([str(seed), *parts]))


def write_pairs(out: Path, spec: WorldSpec) -> list[str]:
    """Write the caption imagefolder; returns every caption written (train first)."""
    texts, next_id = [], 0
    for split, n in (("train", spec.n_train), ("validation", spec.n_val)):
        rng, folder = _rng(spec.seed, "pairs", split), out / split
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "metadata.jsonl", "w", encoding="utf-8") as meta:
            for _ in range(n):
                scene = sample_scene(rng)
                # Image ids are global across splits; the file stem is the id.
                name = f"{next_id:06d}.png"
                render(scene, spec.image_size).save(folder / name, compress_level=1)
                text = caption(scene, rng)
                meta.write(json.dumps({"file_name": name, "text": text}) + "\n")
                texts.append(text)
                next_id += 1
    return texts


def write_vqa(out: Path, spec: WorldSpec) -> list[str]:
    """Write VQA v2 question/annotation JSON and COCO-named images; returns the texts."""
    texts, qid = [], 0
    for split, n in (("train", spec.vqa_train), ("validation", spec.vqa_val)):
        subtype, rng = VQA_SUBTYPES[split], _rng(spec.seed, "vqa", split)
        (out / subtype).mkdir(parents=True, exist_ok=True)
        qs, anns = [], []
        for i in range(n):
            image_id = i + (spec.vqa_train if split == "validation" else 0)
            scene = sample_scene(rng)
            path = out / subtype / f"COCO_{subtype}_{image_id:012d}.jpg"
            render(scene, spec.image_size).save(path, quality=95)
            for qa in questions(scene, rng):
                qs.append({"image_id": image_id, "question": qa.question, "question_id": qid})
                anns.append(
                    {
                        "question_id": qid,
                        "image_id": image_id,
                        "question_type": qa.question_type,
                        "answer_type": qa.answer_type,
                        "multiple_choice_answer": qa.multiple_choice_answer,
                        "answers": [
                            {"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                            for j, a in enumerate(qa.answers)
                        ],
                    }
                )
                texts += [qa.question, *set(qa.answers)]
                qid += 1
        head = {"info": {"description": "onetower synthetic world"}, "license": {}}
        head |= {"data_type": "mscoco", "data_subtype": subtype}
        with open(out / f"v2_OpenEnded_mscoco_{subtype}_questions.json", "w") as f:
            json.dump(head | {"task_type": "Open-Ended", "questions": qs}, f)
        with open(out / f"v2_mscoco_{subtype}_annotations.json", "w") as f:
            json.dump(head | {"annotations": anns}, f)
    return texts


def nlvr2_examples(seed: int, split: str, n: int) -> list[NLVR2Example]:
    """The first ``n`` NLVR2 examples of the world's ``split`` ("train" / "validation") with
    their scenes: what :func:`write_nlvr2` writes for that seed, without rendering."""
    if split not in NLVR2_SPLITS:  # another name would silently draw another stream
        raise ValueError(f"NLVR2 split {split!r}: the world has {sorted(NLVR2_SPLITS)}")
    rng = _rng(seed, "nlvr2", split)
    return [nlvr2_example(rng) for _ in range(n)]


def write_nlvr2(out: Path, spec: WorldSpec) -> list[str]:
    """Write NLVR2 JSON-lines files (string labels) and left/right images; returns texts."""
    texts = []
    for split, n in (("train", spec.nlvr2_train), ("validation", spec.nlvr2_val)):
        name = NLVR2_SPLITS[split]
        image_dir = out / "images" / name
        image_dir.mkdir(parents=True, exist_ok=True)
        with open(out / f"{name}.json", "w", encoding="utf-8") as f:
            for set_id, ex in enumerate(nlvr2_examples(spec.seed, split, n)):
                prefix = f"{name}-{set_id}-0"
                render(ex.left, spec.image_size).save(image_dir / f"{prefix}-img0.png")
                render(ex.right, spec.image_size).save(image_dir / f"{prefix}-img1.png")
                row = {"identifier": f"{prefix}-0", "sentence": ex.sentence, "label": str(ex.label)}
                f.write(json.dumps(row | {"left_url": "", "right_url": ""}) + "\n")
                texts.append(ex.sentence)
    return texts


def write_retrieval(out: Path, spec: WorldSpec) -> None:
    """Write the grouped-caption retrieval split: a Karpathy split file and its images.

    Its captions use the pair captions' templates and words, so they are not added to the
    tokenizer's training texts (the tokenizer stays what the other parts make)."""
    images = []
    (out / "images").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", spec.retrieval_train), ("test", spec.retrieval_test)):
        rng = _rng(spec.seed, "retrieval", split)
        for _ in range(n):
            scene = sample_scene(rng)
            name = f"{len(images):06d}.png"
            render(scene, spec.image_size).save(out / "images" / name, compress_level=1)
            images.append(
                {
                    "filename": name,
                    "filepath": "images",
                    "split": split,
                    "sentences": scene_captions(scene),
                }
            )
    write_karpathy(out / RETRIEVAL_FILE, "synthetic", images)


def write_synthetic_world(root: str | Path, spec: WorldSpec) -> SyntheticWorld:
    """Write every part of the world and its tokenizer into ``root`` (overwrites files)."""
    root = Path(root)
    texts = write_pairs(root / "pairs", spec)
    texts += write_vqa(root / "vqa", spec)
    texts += write_nlvr2(root / "nlvr2", spec)
    write_retrieval(root / "retrieval", spec)
    tokenizer = train_wordpiece_tokenizer(texts, spec.vocab_size, spec.text_length)
    tokenizer.save_pretrained(str(root / "tokenizer"))
    (root / "world.json").write_text(json.dumps(dataclasses.asdict(spec), indent=1))
    return SyntheticWorld(root, spec)


def ensure_synthetic_world(
    root: str | Path, spec: WorldSpec | None = None, **fields
) -> SyntheticWorld:
    """Write the world once and reuse it; safe when several processes call it at once.

    Args:
        root: target folder; reused when its ``world.json`` equals the spec.
        spec: what to generate; or pass ``WorldSpec`` fields as keywords
            (``seed``, ``n_train``, ``n_val``, ``image_size``, ...).

    Returns:
        The world's paths. A folder holding a different spec raises ``FileExistsError``.
    """
    spec = dataclasses.replace(spec or WorldSpec(), **fields)
    root = Path(root)
    marker = root / "world.json"
    if marker.exists():
        if json.loads(marker.read_text()) != dataclasses.asdict(spec):
            raise FileExistsError(f"{root} holds a synthetic world with another spec")
        return SyntheticWorld(root, spec)
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build in a private folder and rename: concurrent ranks never see half-written files.
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    write_synthetic_world(tmp, spec)
    try:
        os.rename(tmp, root)
    except OSError:  # another process won the race; its files are identical
        shutil.rmtree(tmp, ignore_errors=True)
        if not marker.exists():
            raise
    return SyntheticWorld(root, spec)


def synthetic_world_under(parent: str | Path, **fields) -> SyntheticWorld:
    """:func:`ensure_synthetic_world` in a folder of ``parent`` named by the spec (version
    included), so recipes with other image sizes or lengths keep worlds side by side."""
    spec = dataclasses.replace(WorldSpec(), **fields)
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(spec), sort_keys=True).encode())
    name = f"v{spec.version}_{spec.image_size}px_{digest.hexdigest()[:10]}"
    return ensure_synthetic_world(Path(parent) / name, spec)


#: What a model card says of a model trained on the synthetic world (the run record's
#: ``data`` section; the card itself knows no world).
CARD_DATA = {
    "description": (
        "The built-in onetower synthetic world: coloured shapes on plain backgrounds with "
        "template captions, generated from a seed."
    ),
    "limitations": (
        "Trained on **synthetic data** only: it knows simple shapes, colours and positions, "
        "not natural images. Do not use it for real-world predictions."
    ),
    "tags": ["synthetic-data"],
}


def shape_labels(captions: list[str]) -> dict[int, str]:
    """Row -> shape for the captions that name exactly one kind of shape: the built-in
    zero-shot classification set (classes are the shapes)."""
    out = {}
    for i, text in enumerate(captions):
        named = {w.rstrip("s") for w in text.split()} & set(SHAPES)
        if len(named) == 1:
            out[i] = named.pop()
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: write a synthetic world of any size to a folder."""
    parser = argparse.ArgumentParser(prog="python -m onetower.data.synthetic", description=__doc__)
    parser.add_argument("out", type=Path)
    for field in dataclasses.fields(WorldSpec):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=field.default)
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    world = write_synthetic_world(out, WorldSpec(**args))
    print(f"wrote {world.spec} to {out}")


if __name__ == "__main__":
    main()
