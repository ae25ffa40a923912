"""Pretraining data: sources -> datasets -> DataLoaders (unprepared; the engine prepares and
mixes them per step), the held-out pairs and the tokenizer.

With no ``data.pairs`` the built-in synthetic world is written (once) and used for training,
validation and the tokenizer. With ``data.pairs`` the user's data stands alone: a missing
``data.tokenizer`` or ``data.val_pairs`` is an error, never a synthetic stand-in. The tokenizer
is ``data.tokenizer``, else the one saved with ``model.init`` (a model continues with its own
tokenizer), else the world's; the world's never stands in for an init model whose vocabulary it
does not fit.

Streams (tar shards always; tables with ``data.streaming=true``) are split by process here
(each rank reads its own shards) and by DataLoader worker inside the dataset; see
``onetower.data.webdataset`` for what an epoch is. Every training source is read before step
1: one that holds nothing, or whose first rows are all unusable, is an error naming its key.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from omegaconf import DictConfig

from onetower.data import (
    RESIZE_MODES,
    ImageCollator,
    PairCollator,
    SkipCounter,
    SkipSample,
    Source,
    TextCollator,
    build_dataset,
    build_image_transform,
    load_images,
    load_pairs,
    load_texts,
    load_tokenizer,
)
from onetower.data.pipeline import where
from onetower.data.synthetic import CARD_DATA, synthetic_world_under
from onetower.data.webdataset import expand_shards, is_shard_spec
from onetower.training.config import ConfigError

SOURCES = ("pairs", "texts", "images")
#: rows of each training source read before step 1 (all unusable = an error)
PREFLIGHT_ROWS = 64
logger = logging.getLogger(__name__)


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
    if path is None:
        return None
    if key != "tokenizer" and is_shard_spec(path):
        try:
            expand_shards(path)
        except (FileNotFoundError, ValueError) as e:
            raise FileNotFoundError(f"data.{key}: {e}") from None
    elif not Path(path).exists():
        raise FileNotFoundError(f"data.{key}: {path!r} does not exist")
    return path


def resolve_sources(cfg: DictConfig, accelerator: Accelerator) -> tuple[dict[str, Any], dict]:
    """Paths of every source, the held-out pairs and the tokenizer, and the record's ``data``
    section. Writes the synthetic world (main process first) when ``data.pairs`` is null."""
    d = cfg.data
    paths = {k: _check_path(d[k], k) for k in (*SOURCES, "val_pairs", "tokenizer")}
    init = cfg.model.get("init")
    if paths["tokenizer"] is None and init and has_tokenizer(init):
        paths["tokenizer"] = str(init)  # the model continues with the tokenizer it was saved with
    paths.update({n: _check_path(p, f"extra_pairs.{n}") for n, p in d.extra_pairs.items()})
    if d.extra_pairs and paths["pairs"] is None:
        raise ConfigError("data.extra_pairs needs data.pairs (the first pair set) set too")
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
    if paths["tokenizer"] is None:
        paths["tokenizer"] = str(world.tokenizer_dir)
        if init:
            _world_tokenizer_fits(init, world.tokenizer_dir)
    return paths, {"sources": [], **CARD_DATA}


def has_tokenizer(folder: str | Path) -> bool:
    """Whether ``folder`` holds a saved tokenizer."""
    return any((Path(folder) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))


def _world_tokenizer_fits(init: str, tokenizer_dir: Path) -> None:
    """The synthetic world's tokenizer may drive a ``model.init`` model that saved none only
    when it has exactly the model's vocabulary size (a model trained on the world)."""
    config = Path(init) / "config.json"
    if not config.is_file():
        return  # build_model names what the folder is
    vocab = json.loads(config.read_text()).get("vocab_size")
    size = len(load_tokenizer(tokenizer_dir))
    if vocab != size:
        raise ConfigError(
            f"model.init={init!r} holds no tokenizer and its {vocab} token embeddings do not "
            f"fit the synthetic world's tokenizer ({size} tokens): set data.tokenizer to the "
            "tokenizer the model was trained with (the converters save it with --tokenizer or "
            "from the source's processor)"
        )


def _source(name: str, paths: dict[str, str | None], pairs: Source, d: DictConfig) -> Source:
    """One training source; unpaired sources default to the pairs' captions or images."""
    if name == "texts":
        if paths["texts"]:
            return load_texts(paths["texts"], streaming=d.streaming)
        return Source(pairs.dataset, "text", None, pairs.text_column, pairs.base_dir)
    if name == "images":
        if paths["images"]:
            return load_images(paths["images"], streaming=d.streaming)
        return Source(pairs.dataset, "image", pairs.image_column, None, pairs.base_dir)
    return pairs if name == "pairs" else _pairs(paths[name], d, "train")


def _pairs(path: str, d: DictConfig, split: str, shuffle: bool = True) -> Source:
    return load_pairs(
        path,
        split=split,
        streaming=d.streaming,
        shuffle_buffer=d.shuffle_buffer if shuffle else 0,
        resampled=d.resampled and shuffle,
    )


def _per_process(source: Source, accelerator: Accelerator, seed: int, buffer: int) -> Source:
    """A stream's part for this process, shuffled (tables: datasets' shuffle buffer)."""
    if not source.streaming:
        return source
    if not hasattr(source.dataset, "shuffle_buffer") and buffer > 1:  # a datasets stream
        source = replace(source, dataset=source.dataset.shuffle(seed=seed, buffer_size=buffer))
    part = source.shard(accelerator.process_index, accelerator.num_processes)
    part.dataset.split_by_process = True  # this process's part, even with one process
    return part


def _key(name: str) -> str:
    return f"data.{name}" if name in SOURCES else f"data.extra_pairs.{name}"


def preflight(name: str, source: Source, dataset: Any, path: str | None) -> None:
    """Read the first rows of a training source before step 1: nothing at all, or nothing
    usable, is an error naming the config key, what was found and example files."""
    where_ = f"{_key(name)}={path}" if path else f"{_key(name)} (from data.pairs)"
    rows = (
        source.dataset
        if source.streaming
        else (source.dataset[i] for i in range(len(source.dataset)))
    )
    seen, reasons, examples = 0, {}, []
    for row in itertools.islice(rows, PREFLIGHT_ROWS):
        seen += 1
        try:
            if not isinstance(row, dict):
                raise SkipSample("bad_record", type(row).__name__)
            dataset.decode(row)
            return
        except SkipSample as e:
            reasons[e.reason] = reasons.get(e.reason, 0) + 1
            if len(examples) < 3:
                examples.append(f"{where(source, row)} ({e})"[:200])
    if not seen:
        raise ConfigError(f"{where_} holds no samples (nothing to train on)")
    detail = ", ".join(f"{r}={n}" for r, n in reasons.items())
    raise ConfigError(
        f"{where_}: none of its first {seen} samples is usable ({detail}), e.g. "
        + "; ".join(examples)
    )


def _held_out(source: Source, dataset: Any, n: int, path: str) -> Any:
    """The first ``n`` held-out samples as a list when streamed (evaluation needs ``len``)."""
    if not source.streaming:
        return dataset
    samples = [s for s in itertools.islice(iter(dataset), n) if s is not None]
    for s in samples:
        s.pop("__cursor__", None)
    if not samples:
        raise ConfigError(f"data.val_pairs={path} gives no usable pair")
    return samples


def build_data(cfg: DictConfig, accelerator: Accelerator) -> PretrainData:
    """Tokenizer, training loaders (unprepared) and the held-out dataset."""
    d = cfg.data
    names = (*SOURCES, *d.extra_pairs)
    unknown = set(d.ratios) - set(names)
    if unknown:
        raise ConfigError(
            f"data.ratios: unknown source(s) {sorted(unknown)}; sources are {SOURCES} and "
            f"data.extra_pairs names ({sorted(d.extra_pairs) or 'none'})"
        )
    ratios = {k: float(v) for k, v in d.ratios.items() if float(v) > 0}
    if not ratios:
        raise ConfigError("data.ratios: give at least one source a ratio > 0")
    if d.resize not in RESIZE_MODES:
        raise ConfigError(f"data.resize={d.resize!r}: one of {RESIZE_MODES}")
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
        "pairs": PairCollator(tokenizer, d.max_text_len, pad_to_max_length=True, counter=counter),
        "texts": TextCollator(tokenizer, d.max_text_len, pad_to_max_length=True, counter=counter),
        "images": ImageCollator(),
    }
    pairs = _pairs(paths["pairs"], d, "train")  # read once, shared by unpaired sources
    loaders = {}
    for name in ratios:
        source = _per_process(_source(name, paths, pairs, d), accelerator, seed, d.shuffle_buffer)
        tf = train_tf if name != "texts" else None
        dataset = build_dataset(source, tf, counter, seed, resize=d.resize, fill=tuple(d.mean))
        preflight(
            name, source, dataset, paths.get(name) if name != "texts" or paths["texts"] else None
        )
        stream = source.streaming
        loaders[name] = torch.utils.data.DataLoader(
            dataset,
            batch_size=d.batch_size,
            shuffle=not stream,  # a stream shuffles itself (shards per epoch + a buffer)
            drop_last=True,
            collate_fn=collators.get(name, collators["pairs"]),
            num_workers=d.num_workers,
            generator=None if stream else torch.Generator().manual_seed(seed),
            # a stream's workers must see each epoch's set_epoch: new workers per epoch
            persistent_workers=d.num_workers > 0 and not stream,
        )
    val_src = _pairs(paths["val_pairs"], d, "validation", shuffle=False)
    val = build_dataset(val_src, eval_tf, counter, seed, resize=d.resize, fill=tuple(d.mean))
    val = _held_out(val_src, val, cfg.eval.max_samples, paths["val_pairs"])
    return PretrainData(tokenizer, loaders, ratios, val, counter, card)
