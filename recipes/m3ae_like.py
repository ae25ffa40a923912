"""M3AE-style pretraining: one shared encoder on the visible tokens only, MAE-style decoder.

75% of the image patches and of the text tokens are dropped before the encoder (never
encoded); one light joint decoder re-inserts mask tokens in both streams and reconstructs the
raw pixels (image weight 1.0) and the tokens (text weight 0.5, M3AE's README recipe).

    accelerate launch recipes/m3ae_like.py [--config FILE] [key=value ...]
"""

import sys
from pathlib import Path

from onetower.pretraining import PretrainConfig, pretrain
from onetower.training import load_config
from onetower.training.cli import run_recipe

CONFIG = Path(__file__).parent / "configs" / "m3ae_like.yaml"

if __name__ == "__main__":
    run_recipe(lambda argv: pretrain(load_config(PretrainConfig, argv, CONFIG)), sys.argv[1:])
