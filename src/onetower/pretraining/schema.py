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
    """Where the data comes from and how it is read (see ``onetower.pretraining.data``)."""

    #: image-text pairs: an imagefolder, a JSONL / Parquet / CSV file, or WebDataset tar shards
    #: (a .tar, a folder of them, a brace list shards-{000000..000331}.tar, a glob, a URL, or a
    #: comma list of these); null = synthetic (the built-in world)
    pairs: str | None = None
    #: more pair sets, each mixed per step by its ratio: name -> path (as ``pairs``), e.g.
    #: data.extra_pairs.laion=/data/laion/{00000..00099}.tar data.ratios.laion=0.5
    extra_pairs: dict[str, str] = field(default_factory=dict)
    texts: str | None = None  #: text-only source; null = the pairs' captions (when ratio > 0)
    images: str | None = None  #: image-only source; null = the pairs' images (when ratio > 0)
    val_pairs: str | None = None  #: held-out pairs (any ``pairs`` format); needed with pairs
    #: fast-tokenizer folder; null = the one saved with model.init, else the synthetic world's
    #: (needed with data.pairs unless model.init has one)
    tokenizer: str | None = None
    synthetic: SyntheticSection = field(default_factory=SyntheticSection)
    #: per-step sampling weight of each source: pairs, texts, images, or an extra_pairs name
    ratios: dict[str, float] = field(default_factory=lambda: {"pairs": 1.0})
    #: stream table files (JSONL / Parquet / CSV) instead of an Arrow cache; tar shards always
    #: stream
    streaming: bool = False
    shuffle_buffer: int = 1000  #: rows held for shuffling a stream (tar shards, streaming=true)
    #: tar shards drawn with replacement, no epochs (open_clip's resampled mode)
    resampled: bool = False
    image_size: int = 64
    #: non-square images: crop (random / centre crop, the default), pad (to a square with the
    #: mean colour, nothing lost) or squash (resize to a square, aspect changed); counted
    resize: str = "crop"
    #: text positions; longer captions are cut (counted and warned); the model's position
    #: table is sized to it
    max_text_len: int = 24
    batch_size: int = 32  #: per process
    num_workers: int = 0
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    #: training images: RandomResizedCrop's area range (FLAVA: 0.9-1.0); [1.0, 1.0] = the whole
    #: image, uncropped (the synthetic world's recipes: its shapes sit one per patch)
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    #: stop when more than this fraction of the samples seen (each time seen) is unusable
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
