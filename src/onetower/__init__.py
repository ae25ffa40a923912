"""onetower: pretrain and fine-tune single-stream vision-language transformers.

Importing ``onetower`` registers ``OneTowerConfig`` / ``OneTowerModel`` with transformers'
``AutoConfig`` / ``AutoModel``, the VQA model with ``AutoModelForVisualQuestionAnswering`` and
the NLVR2 model with ``AutoModelForSequenceClassification``.
"""

from onetower.backbones import BackboneError, init_from_backbones
from onetower.configuration import SIZES, OneTowerConfig
from onetower.convert_io import save_converted
from onetower.convert_vilt import (
    convert_vilt_heads,
    convert_vilt_to_onetower,
    vilt_config_to_onetower,
)
from onetower.modeling import OneTowerModel, OneTowerPreTrainedModel
from onetower.outputs import EncoderOutput
from onetower.processing import OneTowerImageProcessor, OneTowerProcessor
from onetower.task_models import (
    ClassifierOutput,
    OneTowerForImagesAndTextClassification,
    OneTowerForQuestionAnswering,
)

__version__ = "0.1.0"

__all__ = [
    "SIZES",
    "BackboneError",
    "ClassifierOutput",
    "EncoderOutput",
    "OneTowerConfig",
    "OneTowerForImagesAndTextClassification",
    "OneTowerForQuestionAnswering",
    "OneTowerImageProcessor",
    "OneTowerModel",
    "OneTowerPreTrainedModel",
    "OneTowerProcessor",
    "convert_vilt_heads",
    "convert_vilt_to_onetower",
    "init_from_backbones",
    "save_converted",
    "vilt_config_to_onetower",
]
