"""Objective heads, their losses, and the composer that weights them.

Importing a head module registers its builder (see :mod:`onetower.objectives.registry`):
adding an objective is one file here plus one export line below.
"""

from onetower.objectives.base import (
    IGNORE_INDEX,
    IMAGE,
    MASKED_PAIR,
    PAIR,
    TEXT,
    VIEW_NAMES,
    Objective,
    ObjectiveOutput,
    PredictionTransform,
)
from onetower.objectives.composer import ComposerOutput, ObjectiveComposer
from onetower.objectives.contrastive import (
    LOGIT_SCALE_INIT,
    LOGIT_SCALE_MAX,
    ContrastiveHead,
    ContrastiveResult,
    contrastive_loss,
)
from onetower.objectives.distributed import gather_with_grad
from onetower.objectives.itm import ITMHead
from onetower.objectives.itm_negatives import NegativePairs, hard_negatives, random_negatives
from onetower.objectives.m3ae import M3AEHead
from onetower.objectives.mim import MIMHead
from onetower.objectives.mim_decoder import MAEDecoder, MaskTokenPredictor, reinsert_mask_tokens
from onetower.objectives.mim_targets import MIMTarget, PixelTarget, TokenTarget
from onetower.objectives.mlm import MLMHead
from onetower.objectives.registry import OBJECTIVES, build_objective, register_objective
from onetower.objectives.views import PairView, StepViews, ViewOptions

__all__ = [
    "IGNORE_INDEX",
    "IMAGE",
    "LOGIT_SCALE_INIT",
    "LOGIT_SCALE_MAX",
    "MASKED_PAIR",
    "OBJECTIVES",
    "PAIR",
    "TEXT",
    "VIEW_NAMES",
    "ComposerOutput",
    "ContrastiveHead",
    "ContrastiveResult",
    "ITMHead",
    "M3AEHead",
    "MAEDecoder",
    "MIMHead",
    "MIMTarget",
    "MLMHead",
    "MaskTokenPredictor",
    "NegativePairs",
    "Objective",
    "ObjectiveComposer",
    "ObjectiveOutput",
    "PairView",
    "PixelTarget",
    "PredictionTransform",
    "StepViews",
    "TokenTarget",
    "ViewOptions",
    "build_objective",
    "contrastive_loss",
    "gather_with_grad",
    "hard_negatives",
    "random_negatives",
    "register_objective",
    "reinsert_mask_tokens",
]
