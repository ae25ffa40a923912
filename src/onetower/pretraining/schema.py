"""The pretraining recipes' config: the engine's ``run`` and ``train`` sections plus ``model``
(size and any ``OneTowerConfig`` field), ``objectives`` (one stanza per head, with its
weight and options, masking ratios included), ``data`` and ``eval``.

Sections ``model`` and ``objectives`` are open dicts checked by their owners, which name
unknown keys too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onetower.training.schema import RunSection, TrainSection


@dataclass
class SyntheticSection:
    root: str = "runs/synthetic_world"
    seed: int = 0
    n_train: int = 2000
    n_val: int = 200


@dataclass
class DataSection:
    pairs: str | None = (
        None  #: image-text pairs (imagefolder / JSONL / Parquet / tar); null = synthetic
    )
    texts: str | None = None  #: text-only source; null = the pairs' captions (when ratio > 0)
    images: str | None = None  #: image-only source; null = the pairs' images (when ratio > 0)
    val_pairs: str | None = None  #: held-out pairs; null = the synthetic validation split
    tokenizer: str | None = None  #: local fast-tokenizer folder; null = the synthetic one
    synthetic: SyntheticSection = field(default_factory=SyntheticSection)
    ratios: dict[str, float] = field(default_factory=lambda: {"pairs": 1.0})
    image_size: int = 64
    max_text_len: int = 24
    batch_size: int = 32  #: per process
    num_workers: int = 0
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    max_bad_fraction: float = 0.05


@dataclass
class EvalSection:
    max_samples: int = 200  #: held-out pairs used for losses, retrieval and the word probe
    batch_size: int = 50
    reconstructions: int = 6  #: MIM recipes: images in the reconstruction grid
    #: grounding probe with the MLM head: group name -> words; every token of a group's words
    #: in a held-out caption is masked and predicted with the image and with a blank image
    #: (the gap is what the model reads from the image); {} = off
    probe_words: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class PretrainConfig:
    run: RunSection = field(default_factory=RunSection)
    model: dict[str, Any] = field(default_factory=lambda: {"size": "tiny"})
    objectives: dict[str, Any] = field(default_factory=dict)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
