"""Pretraining: the objective heads over the shared encoder, as a task of the engine.

``pretrain(cfg)`` runs a pretraining recipe (``recipes/flava_like.py`` and its peers); its
config schema is :class:`PretrainConfig`.
"""

from omegaconf import DictConfig

from onetower.pretraining.heads_io import HEADS_FILE, load_heads, save_heads
from onetower.pretraining.schema import PretrainConfig
from onetower.pretraining.task import PretrainTask
from onetower.training.engine import train
from onetower.training.record import RunResult


def pretrain(cfg: DictConfig) -> RunResult:
    """Run a pretraining recipe described by ``cfg`` (see :class:`PretrainConfig`)."""
    return train(cfg, PretrainTask(cfg))


__all__ = [
    "HEADS_FILE",
    "PretrainConfig",
    "PretrainTask",
    "load_heads",
    "pretrain",
    "save_heads",
]
