"""Build a run's pieces from its config: Accelerator, model, objectives, masking."""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import GradientAccumulationPlugin, is_wandb_available
from omegaconf import DictConfig, OmegaConf

from onetower.configuration import OneTowerConfig
from onetower.data.batch_masking import BatchMasker
from onetower.data.collators import PatchMasking, TextMasking
from onetower.modeling import OneTowerModel
from onetower.objectives import ObjectiveComposer
from onetower.training.config import ConfigError

TRACKERS = ("tensorboard", "wandb", "none")
PRECISIONS = ("no", "bf16", "fp16")


def make_accelerator(cfg: DictConfig, find_unused_parameters: bool = True) -> Accelerator:
    """An Accelerator for the run: CPU (gloo when several processes) unless CUDA is there.

    ``find_unused_parameters``: pretraining's unpaired batches run only some heads, so the
    others get no gradient that step; a fine-tuned task model uses every parameter, and DDP's
    extra graph traversal for unused ones is then wasted.
    """
    t = cfg.train
    if cfg.run.tracker not in TRACKERS:
        raise ConfigError(f"run.tracker must be one of {TRACKERS}, got {cfg.run.tracker!r}")
    if t.mixed_precision not in PRECISIONS:
        raise ConfigError(
            f"train.mixed_precision must be one of {PRECISIONS}, got {t.mixed_precision!r}"
        )
    if cfg.run.tracker == "wandb" and not is_wandb_available():
        raise ConfigError("run.tracker=wandb but wandb is not installed (pip install wandb)")
    if t.grad_accum < 1:
        raise ConfigError(f"train.grad_accum must be >= 1, got {t.grad_accum}")
    cpu = cfg.run.cpu or not torch.cuda.is_available()
    if cpu:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        torch.set_num_threads(cfg.run.cpu_threads or max(1, (os.cpu_count() or 1) // local))
    return Accelerator(
        cpu=cpu,
        mixed_precision=t.mixed_precision,
        # Several loaders feed one run, so one loader's end must not force a sync mid-accumulation.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=t.grad_accum, sync_with_dataloader=False
        ),
        log_with=None if cfg.run.tracker == "none" else cfg.run.tracker,
        project_dir=cfg.run.output_dir,
        # Exact resume needs a sampler whose order depends only on (seed, epoch).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)
        ],
    )


def build_model(cfg: DictConfig, tokenizer: Any) -> OneTowerModel:
    """The encoder: ``model.init`` (a saved onetower model) or a new one from ``model.size``
    plus any ``OneTowerConfig`` field, sized to the tokenizer and the data."""
    fields = OmegaConf.to_container(cfg.model, resolve=True)
    init = fields.pop("init", None)
    size = fields.pop("size", None)
    if init:
        if fields or size:
            raise ConfigError(
                f"model.init={init!r} loads a saved model: drop model.{sorted(fields) or ['size']}"
            )
        model = OneTowerModel.from_pretrained(init)
    else:
        defaults = dict(
            vocab_size=len(tokenizer), max_text_len=cfg.data.max_text_len,
            image_size=cfg.data.image_size, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        try:
            config = (
                OneTowerConfig.from_size(size, **{**defaults, **fields})
                if size
                else OneTowerConfig(**{**defaults, **fields})
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model: {e}") from None
        model = OneTowerModel(config)
    c = model.config
    if len(tokenizer) > c.vocab_size:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {c.vocab_size}"
        )
    if cfg.data.max_text_len > c.max_text_len:
        raise ConfigError(
            f"data.max_text_len {cfg.data.max_text_len} > the model's max_text_len {c.max_text_len}"
        )
    if cfg.train.activation_checkpointing:
        model.activation_checkpointing_enable()
    return model


def build_composer(cfg: DictConfig, model: OneTowerModel) -> ObjectiveComposer:
    """The objective heads and their weights, from the ``objectives`` section."""
    stanzas = OmegaConf.to_container(cfg.objectives, resolve=True)
    try:
        return ObjectiveComposer.from_config(model, stanzas, seed=cfg.run.seed)
    except ValueError as e:
        raise ConfigError(f"objectives: {e}") from None


def build_masker(cfg: DictConfig, tokenizer: Any, model: OneTowerModel, heads: dict) -> BatchMasker:
    """Per-step masking for what the heads declare: ``text_masking`` ("replace": BERT
    corruption, "drop": M3AE removes the tokens) and ``masking`` (any image masking)."""
    d = cfg.data
    text_modes = {getattr(h, "text_masking", None) for h in heads.values()} - {None}
    text = TextMasking(d.mlm_probability, whole_word=d.whole_word_mask) if text_modes else None
    patch = None
    if any(hasattr(h, "masking") for h in heads.values()):
        if not 0 < d.mask_ratio < 1:
            raise ConfigError(f"image masking needs 0 < data.mask_ratio < 1, got {d.mask_ratio}")
        patch = PatchMasking(model.image.grid, d.mask_ratio, block=d.block_mask)
    return BatchMasker(tokenizer, text, patch, drop_text="drop" in text_modes)
