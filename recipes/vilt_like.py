"""ViLT-style pretraining: a plain shared encoder over [text ; image patches] trained with
masked language modeling (text conditioned on the image) and image-text matching.

    accelerate launch recipes/vilt_like.py [--config FILE] [key=value ...]
"""

import sys
from pathlib import Path

from onetower.pretraining import PretrainConfig, pretrain
from onetower.training import load_config
from onetower.training.cli import run_recipe

CONFIG = Path(__file__).parent / "configs" / "vilt_like.yaml"

if __name__ == "__main__":
    run_recipe(lambda argv: pretrain(load_config(PretrainConfig, argv, CONFIG)), sys.argv[1:])
