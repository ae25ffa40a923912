"""Training utilities: recipe configs, the Accelerate loop, checkpoints, evaluation, plots."""

from onetower.training.checkpoint import list_checkpoints, resolve_resume, save_checkpoint
from onetower.training.config import ConfigError, flatten, load_config, save_config
from onetower.training.loop import pretrain
from onetower.training.optim import build_optimizer, build_scheduler, param_groups
from onetower.training.report import RunResult
from onetower.training.schema import PretrainConfig
from onetower.training.steps import TrainState

__all__ = [
    "ConfigError",
    "PretrainConfig",
    "RunResult",
    "TrainState",
    "build_optimizer",
    "build_scheduler",
    "flatten",
    "list_checkpoints",
    "load_config",
    "param_groups",
    "pretrain",
    "resolve_resume",
    "save_checkpoint",
    "save_config",
]
