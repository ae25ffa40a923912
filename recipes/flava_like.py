"""FLAVA-style pretraining: unimodal text and image towers, then shared fusion layers.

Objectives (all weight 1.0): masked language modeling and masked image modeling (mask
tokens, FLAVA's masked multimodal modeling) on the masked pair, image-text matching with
random captions as negatives (as FLAVA), global contrastive on the towers' CLS states; plus
unimodal MLM on text-only and MIM on image-only batches. The default config pretrains on the built-in synthetic world.

    accelerate launch recipes/flava_like.py [--config FILE] [key=value ...]
"""

import sys
from pathlib import Path

from onetower.pretraining import PretrainConfig, pretrain
from onetower.training import load_config
from onetower.training.cli import run_recipe

CONFIG = Path(__file__).parent / "configs" / "flava_like.yaml"

if __name__ == "__main__":
    run_recipe(lambda argv: pretrain(load_config(PretrainConfig, argv, CONFIG)), sys.argv[1:])
