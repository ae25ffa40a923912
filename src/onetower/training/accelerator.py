"""The run's Accelerator, from the ``run`` and ``train`` sections of its config."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.state import PartialState
from accelerate.utils import (
    DistributedType,
    FullyShardedDataParallelPlugin,
    GradientAccumulationPlugin,
    is_wandb_available,
)
from omegaconf import DictConfig

from onetower.training.config import ConfigError

TRACKERS = ("tensorboard", "wandb", "none")
PRECISIONS = ("no", "bf16", "fp16")


def check_run_config(cfg: DictConfig) -> None:
    """The engine's own keys, checked before anything is built or written.

    Raises:
        ConfigError: naming the key.
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
    for key in ("grad_accum", "log_every", "keep_last"):
        if t[key] < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {t[key]}")
    if t.max_steps < 0:
        raise ConfigError(f"train.max_steps must be >= 0, got {t.max_steps}")


def make_accelerator(cfg: DictConfig, find_unused_parameters: bool) -> Accelerator:
    """An Accelerator for the run: CPU (gloo when several processes) unless CUDA is there.

    Args:
        cfg: the run's config (``run`` and ``train`` sections).
        find_unused_parameters: DDP looks for parameters that got no gradient in a step
            (pretraining's unpaired batches run only some heads); a fine-tuned task model uses
            every parameter, and the extra graph traversal is then wasted.
    """
    check_run_config(cfg)
    t = cfg.train
    cpu = cfg.run.cpu or not torch.cuda.is_available()
    if cpu:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        torch.set_num_threads(cfg.run.cpu_threads or max(1, (os.cpu_count() or 1) // local))
    accelerator = Accelerator(
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
    engage_fsdp_on_cpu(accelerator)
    return accelerator


def engage_fsdp_on_cpu(accelerator: Accelerator) -> None:
    """Make an FSDP launch (``ACCELERATE_USE_FSDP=true``, e.g. ``accelerate launch --config_file
    recipes/accelerate/fsdp2.yaml``) shard on CPU processes too.

    accelerate 1.15 turns on FSDP only for GPU-like process groups: with several CPU (gloo)
    processes it silently runs the FSDP config as plain DDP. Here the FSDP plugin (read from the
    same ``FSDP_*`` variables the launcher sets) is installed in accelerate's shared state
    instead, so ``prepare`` shards with ``fully_shard`` (parameters become DTensors) exactly as
    on GPUs. One CPU process has no process group to shard over and stays unsharded.
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    # AcceleratorState copies PartialState's fields whenever it is built again
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
