"""BEiT-3-style pretraining: a Multiway encoder (per-modality LayerNorms and FFN experts,
shared attention) trained with one masked-data-modeling objective over images (mask tokens),
texts and image-text pairs.

    accelerate launch recipes/beit3_like.py [--config FILE] [key=value ...]
"""

import sys
from pathlib import Path

from onetower.pretraining import PretrainConfig, pretrain
from onetower.training import load_config
from onetower.training.cli import run_recipe

CONFIG = Path(__file__).parent / "configs" / "beit3_like.yaml"

if __name__ == "__main__":
    run_recipe(lambda argv: pretrain(load_config(PretrainConfig, argv, CONFIG)), sys.argv[1:])
