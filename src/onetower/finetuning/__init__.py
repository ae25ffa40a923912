"""Fine-tuning: task models (VQA v2, NLVR2) from a pretrained encoder, as a task of the engine.

``finetune(cfg)`` runs a fine-tuning recipe (``recipes/finetune_vqa.py``,
``recipes/finetune_nlvr2.py``); its config schema is :class:`FinetuneConfig`. One file per task
(``vqa.py``, ``nlvr2.py``) registered in ``registry.TASKS``.
"""

from omegaconf import DictConfig

from onetower.finetuning.registry import TASKS
from onetower.finetuning.schema import FinetuneConfig
from onetower.finetuning.task import FinetuneTask
from onetower.training.engine import train
from onetower.training.record import RunResult


def finetune(cfg: DictConfig) -> RunResult:
    """Run a fine-tuning recipe described by ``cfg`` (see :class:`FinetuneConfig`)."""
    return train(cfg, FinetuneTask(cfg))


__all__ = ["TASKS", "FinetuneConfig", "FinetuneTask", "finetune"]
