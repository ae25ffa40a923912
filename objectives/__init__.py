"""Objective heads, their losses, the views they declare, and the composer that weights them.

Importing a head module registers its builder (see :mod:`onetower.objectives.registry`):
adding an objective is one file here plus one export line below.
"""

from onetower.objectives.base import (
    IGNORE_INDEX,
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
from onetower.objectives.itm import HardNegatives, ITMHead
from onetower.objectives.itm_negatives import (
    NegativePairs,
    RandomNegatives,
    hard_negatives,
    random_negatives,
)
from onetower.objectives.m3ae import M3AEHead
from onetower.objectives.mim import MIMHead
from onetower.objectives.mim_decoder import MAEDecoder, MaskTokenPredictor, reinsert_mask_tokens
from onetower.objectives.mim_targets import MIMTarget, PixelTarget, TokenTarget
from onetower.objectives.mlm import MLMHead
from onetower.objectives.registry import OBJECTIVES, build_objective, register_objective
from onetower.objectives.view_plan import StepViews, ViewConflict, plan_views
from onetower.objectives.views import (
    IMAGE,
    MASKED_PAIR,
    PAIR,
    TEXT,
    ImageView,
    MaskedPairView,
    NegativeSampler,
    PairOutput,
    PairView,
    TextView,
    ViewSpec,
)
from onetower.objectives.wpa import WPAHead as WPAHead

__all__ = [
    "IGNORE_INDEX",
    "IMAGE",
    "LOGIT_SCALE_INIT",
    "LOGIT_SCALE_MAX",
    "MASKED_PAIR",
    "OBJECTIVES",
    "PAIR",
    "TEXT",
    "ComposerOutput",
    "ContrastiveHead",
    "ContrastiveResult",
    "HardNegatives",
    "ITMHead",
    "ImageView",
    "M3AEHead",
    "MAEDecoder",
    "MIMHead",
    "MIMTarget",
    "MLMHead",
    "MaskTokenPredictor",
    "MaskedPairView",
    "NegativePairs",
    "NegativeSampler",
    "Objective",
    "ObjectiveComposer",
    "ObjectiveOutput",
    "PairOutput",
    "PairView",
    "PixelTarget",
    "PredictionTransform",
    "RandomNegatives",
    "StepViews",
    "TextView",
    "TokenTarget",
    "ViewConflict",
    "ViewSpec",
    "build_objective",
    "contrastive_loss",
    "gather_with_grad",
    "hard_negatives",
    "plan_views",
    "random_negatives",
    "register_objective",
    "reinsert_mask_tokens",
]
