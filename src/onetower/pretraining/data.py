"""Pretraining data: sources -> datasets -> DataLoaders (unprepared; the engine prepares and
mixes them per step), the held-out pairs and the tokenizer.

With no ``data.pairs`` the built-in synthetic world is written (once) and used for training,
validation and the tokenizer. With ``data.pairs`` the user's data stands alone: a missing
``data.tokenizer`` or ``data.val_pairs`` is an error, never a synthetic stand-in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from omegaconf import DictConfig

from onetower.data import (
    ImageCollator,
    PairCollator,
    SkipCounter,
    Source,
    TextCollator,
    build_dataset,
    build_image_transform,
    load_images,
    load_pairs,
    load_texts,
    load_tokenizer,
)
from onetower.data.synthetic import CARD_DATA, synthetic_world_under
from onetower.training.config import ConfigError

SOURCES = ("pairs", "texts", "images")


@dataclass
class PretrainData:
    """What a pretraining run reads.

    Attributes:
        tokenizer: the fast tokenizer.
        loaders: source name -> unprepared training DataLoader.
        ratios: source name -> sampling weight.
        val: a dataset of decoded held-out pairs.
        counter: skipped-sample counts.
        card: the run record's ``data`` section (sources, description, limitations, tags).
    """

    tokenizer: Any
    loaders: dict[str, torch.utils.data.DataLoader]
    ratios: dict[str, float]
    val: Any
    counter: SkipCounter
    card: dict[str, Any] = field(default_factory=dict)


def _check_path(path: str | None, key: str) -> str | None:
    if path is not None and not Path(path).exists():
        raise FileNotFoundError(f"data.{key}: {path!r} does not exist")
    return path


def resolve_sources(cfg: DictConfig, accelerator: Accelerator) -> tuple[dict[str, Any], dict]:
    """Paths of every source, the held-out pairs and the tokenizer, and the record's ``data``
    section. Writes the synthetic world (main process first) when ``data.pairs`` is null."""
    d = cfg.data
    paths = {k: _check_path(d[k], k) for k in (*SOURCES, "val_pairs", "tokenizer")}
    if paths["pairs"] is not None:
        for key in ("tokenizer", "val_pairs"):
            if paths[key] is None:
                raise ConfigError(
                    f"data.pairs names your data but data.{key} is not set: set it (the "
                    "built-in synthetic world's is never used behind your data)"
                )
        sources = [str(v) for k, v in paths.items() if v is not None and k != "tokenizer"]
        card = {
            "sources": sources,
            "description": "Image-text pairs from " + ", ".join(sources) + ".",
        }
        return paths, card
    s = d.synthetic
    with accelerator.main_process_first():
        world = synthetic_world_under(
            s.root,
            seed=s.seed,
            n_train=s.n_train,
            n_val=s.n_val,
            image_size=d.image_size,
            text_length=d.max_text_len,
        )
    paths["pairs"] = str(world.split_dir("train"))
    paths["val_pairs"] = paths["val_pairs"] or str(world.split_dir("validation"))
    paths["tokenizer"] = paths["tokenizer"] or str(world.tokenizer_dir)
    return paths, {"sources": [], **CARD_DATA}


def _source(name: str, paths: dict[str, str | None], pairs: Source) -> Source:
    """One training source; unpaired sources default to the pairs' captions or images."""
    if name == "pairs":
        return pairs
    if name == "texts":
        if paths["texts"]:
            return load_texts(paths["texts"])
        return Source(pairs.dataset, "text", None, pairs.text_column, pairs.base_dir)
    if paths["images"]:
        return load_images(paths["images"])
    return Source(pairs.dataset, "image", pairs.image_column, None, pairs.base_dir)


def build_data(cfg: DictConfig, accelerator: Accelerator) -> PretrainData:
    """Tokenizer, training loaders (unprepared) and the held-out dataset."""
    d = cfg.data
    unknown = set(d.ratios) - set(SOURCES)
    if unknown:
        raise ConfigError(
            f"data.ratios: unknown source(s) {sorted(unknown)}; sources are {SOURCES}"
        )
    ratios = {k: float(v) for k, v in d.ratios.items() if float(v) > 0}
    if not ratios:
        raise ConfigError("data.ratios: give at least one source a ratio > 0")
    paths, card = resolve_sources(cfg, accelerator)
    tokenizer = load_tokenizer(paths["tokenizer"], model_max_length=d.max_text_len)
    counter = SkipCounter(max_bad_fraction=d.max_bad_fraction)
    norm = dict(mean=tuple(d.mean), std=tuple(d.std))
    train_tf = build_image_transform(d.image_size, train=True, scale=tuple(d.crop_scale), **norm)
    eval_tf = build_image_transform(d.image_size, train=False, **norm)
    seed = cfg.run.seed
    # Fixed-length text: masks drawn for the global batch then split across processes need
    # one shape (see BatchMasker); masking itself happens per step in the task.
    collators = {
        "pairs": PairCollator(tokenizer, d.max_text_len, pad_to_max_length=True),
        "texts": TextCollator(tokenizer, d.max_text_len, pad_to_max_length=True),
        "images": ImageCollator(),
    }
    pairs = load_pairs(paths["pairs"], split="train")  # read once, shared by unpaired sources
    loaders = {}
    for name in ratios:
        dataset = build_dataset(
            _source(name, paths, pairs), train_tf if name != "texts" else None, counter, seed
        )
        loaders[name] = torch.utils.data.DataLoader(
            dataset,
            batch_size=d.batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=collators[name],
            num_workers=d.num_workers,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=d.num_workers > 0,
        )
    val = build_dataset(load_pairs(paths["val_pairs"], split="validation"), eval_tf, counter, seed)
    return PretrainData(tokenizer, loaders, ratios, val, counter, card)
