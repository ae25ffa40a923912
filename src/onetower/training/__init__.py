"""The training engine: one loop (:func:`train`) that drives any :class:`Task`, with the
run's config, Accelerator, checkpoints, optimizer and schedule, run record and final save.
It knows no objective, task or data set: pretraining (:mod:`onetower.pretraining`) and
fine-tuning (:mod:`onetower.finetuning`) are tasks.
"""

from onetower.training.checkpoint import list_checkpoints, resolve_resume, save_checkpoint
from onetower.training.config import ConfigError, flatten, load_config, save_config
from onetower.training.engine import train
from onetower.training.optim import build_scheduler, param_groups
from onetower.training.record import RunResult
from onetower.training.state import Stream, TrainState
from onetower.training.task import Built, RunInfo, StepContext, StepOutput, Task

__all__ = [
    "Built",
    "ConfigError",
    "RunInfo",
    "RunResult",
    "StepContext",
    "StepOutput",
    "Stream",
    "Task",
    "TrainState",
    "build_scheduler",
    "flatten",
    "list_checkpoints",
    "load_config",
    "param_groups",
    "resolve_resume",
    "save_checkpoint",
    "save_config",
    "train",
]
