"""Training data for a recipe: sources -> datasets -> DataLoaders, mixed per step.

Every step draws one source (pairs, text-only, image-only) with probability proportional to
its ratio, from a generator seeded by ``(seed, step)``: the same on every process, so all
ranks run the same heads each step. Each source's position (epoch, batches taken) is state
that is saved with the checkpoint, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, skip_first_batches
from omegaconf import DictConfig

from onetower.data import (
    ImageCollator,
    PairCollator,
    SkipCounter,
    Source,
    TextCollator,
    build_dataset,
    build_image_transform,
    ensure_synthetic_world,
    load_images,
    load_pairs,
    load_texts,
    load_tokenizer,
)
from onetower.data.batch_masking import step_generator
from onetower.data.world import WORLD_VERSION

SOURCES = ("pairs", "texts", "images")


@dataclass
class DataBundle:
    """What a run reads: tokenizer, per-source loaders and the held-out pairs."""

    tokenizer: Any
    loaders: dict[str, torch.utils.data.DataLoader]
    ratios: dict[str, float]
    val: Any  # a torch Dataset of decoded held-out pairs
    counter: SkipCounter
    vocab_words: dict[str, list[int]] = field(default_factory=dict)


def _check_path(path: str | None, what: str) -> str | None:
    if path is not None and not Path(path).exists():
        raise FileNotFoundError(f"data.{what}: {path!r} does not exist")
    return path


def resolve_sources(cfg: DictConfig, accelerator: Accelerator) -> tuple[dict[str, str | None], str]:
    """Paths of the pairs / val pairs / tokenizer, writing the synthetic world when needed."""
    d = cfg.data
    paths = {
        k: _check_path(d[k], k) for k in ("pairs", "texts", "images", "val_pairs", "tokenizer")
    }
    if paths["pairs"] is None or paths["val_pairs"] is None or paths["tokenizer"] is None:
        s = d.synthetic
        # one folder per spec under the root, so recipes with other image sizes coexist
        name = f"v{WORLD_VERSION}_seed{s.seed}_{s.n_train}+{s.n_val}_{d.image_size}px_len{d.max_text_len}"
        with accelerator.main_process_first():
            world = ensure_synthetic_world(
                Path(s.root) / name, seed=s.seed, n_train=s.n_train, n_val=s.n_val,
                image_size=d.image_size, text_length=d.max_text_len,
            )  # fmt: skip
        paths["pairs"] = paths["pairs"] or str(world.split_dir("train"))
        paths["val_pairs"] = paths["val_pairs"] or str(world.split_dir("validation"))
        paths["tokenizer"] = paths["tokenizer"] or str(world.tokenizer_dir)
    return paths, paths["tokenizer"]


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


def build_data(cfg: DictConfig, accelerator: Accelerator) -> DataBundle:
    """Build tokenizer, train loaders (unprepared) and the held-out dataset."""
    d = cfg.data
    ratios = {k: float(v) for k, v in d.ratios.items() if float(v) > 0}
    unknown = set(d.ratios) - set(SOURCES)
    if unknown:
        raise ValueError(f"data.ratios: unknown source(s) {sorted(unknown)}; sources are {SOURCES}")
    if not ratios:
        raise ValueError("data.ratios: give at least one source a ratio > 0")
    paths, tok_path = resolve_sources(cfg, accelerator)
    tokenizer = load_tokenizer(tok_path, model_max_length=d.max_text_len)
    counter = SkipCounter(max_bad_fraction=d.max_bad_fraction)
    train_tf = build_image_transform(d.image_size, train=True, mean=tuple(d.mean), std=tuple(d.std),
                                     scale=tuple(d.crop_scale))  # fmt: skip
    eval_tf = build_image_transform(d.image_size, train=False, mean=tuple(d.mean), std=tuple(d.std))
    seed = cfg.run.seed
    # Fixed-length text: masks drawn for the global batch then split across processes need
    # one shape (see BatchMasker); masking itself happens per step in the loop.
    collators = {
        "pairs": PairCollator(tokenizer, d.max_text_len, seed=seed, pad_to_max_length=True),
        "texts": TextCollator(tokenizer, d.max_text_len, seed=seed, pad_to_max_length=True),
        "images": ImageCollator(seed=seed),
    }
    pairs = load_pairs(paths["pairs"], split="train")  # read once, shared by unpaired sources
    loaders = {}
    for name in ratios:
        dataset = build_dataset(
            _source(name, paths, pairs), train_tf if name != "texts" else None, counter, seed
        )
        loaders[name] = torch.utils.data.DataLoader(
            dataset, batch_size=d.batch_size, shuffle=True, drop_last=True,
            collate_fn=collators[name], num_workers=d.num_workers,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=d.num_workers > 0,
        )  # fmt: skip
    val = build_dataset(load_pairs(paths["val_pairs"], split="validation"), eval_tf, counter, seed)
    return DataBundle(tokenizer, loaders, ratios, val, counter)


class MixedStream:
    """Per-step source choice plus resumable per-source positions.

    Registered with ``accelerator.register_for_checkpointing``: its ``state_dict`` holds each
    source's epoch and the number of batches taken in that epoch.
    """

    def __init__(self, loaders: dict[str, Any], ratios: dict[str, float], seed: int) -> None:
        self.loaders, self.seed = loaders, seed
        self.names = sorted(loaders)
        self.weights = torch.tensor([ratios[n] for n in self.names], dtype=torch.float64)
        self.position = {n: {"epoch": 0, "taken": 0} for n in self.names}
        self._iters: dict[str, Any] = {}

    def state_dict(self) -> dict:
        return {"position": {n: dict(p) for n, p in self.position.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.position = {n: dict(p) for n, p in state["position"].items()}
        self._iters = {}  # rebuilt lazily at the saved position

    def choose(self, micro_step: int) -> str:
        """The source of a micro-step; identical on every process."""
        if len(self.names) == 1:
            return self.names[0]
        g = step_generator(self.seed, micro_step, rank=10_007)  # a stream apart from masking's
        return self.names[int(torch.multinomial(self.weights, 1, generator=g))]

    def _iterator(self, name: str) -> Any:
        loader, pos = self.loaders[name], self.position[name]
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(pos["epoch"])
        # accelerate 1.15's DataLoaderShard.set_epoch skips dataset.set_epoch when the batch
        # sampler is sharded (several processes): augmentation epochs would then differ from
        # a one-process run, so set it here too.
        if hasattr(getattr(loader, "dataset", None), "set_epoch"):
            loader.dataset.set_epoch(pos["epoch"])
        if pos["taken"]:  # resume mid-epoch: the seedable sampler replays this epoch's order
            return iter(skip_first_batches(loader, pos["taken"]))
        return iter(loader)

    def next(self, micro_step: int) -> tuple[str, dict[str, torch.Tensor]]:
        """``(source name, batch)`` for a micro-step."""
        name = self.choose(micro_step)
        if name not in self._iters:
            self._iters[name] = self._iterator(name)
        try:
            batch = next(self._iters[name])
        except StopIteration:
            self.position[name] = {"epoch": self.position[name]["epoch"] + 1, "taken": 0}
            self._iters[name] = self._iterator(name)
            batch = next(self._iters[name])
        self.position[name]["taken"] += 1
        return name, batch
