"""onetower: pretrain and fine-tune single-stream vision-language transformers.

Importing ``onetower`` registers ``OneTowerConfig`` / ``OneTowerModel`` with transformers'
``AutoConfig`` / ``AutoModel``.
"""

from onetower.configuration import SIZES, OneTowerConfig
from onetower.convert_vilt import convert_vilt_to_onetower, vilt_config_to_onetower
from onetower.modeling import OneTowerModel, OneTowerPreTrainedModel
from onetower.outputs import EncoderOutput

__version__ = "0.1.0"

__all__ = [
    "SIZES",
    "EncoderOutput",
    "OneTowerConfig",
    "OneTowerModel",
    "OneTowerPreTrainedModel",
    "convert_vilt_to_onetower",
    "vilt_config_to_onetower",
]
