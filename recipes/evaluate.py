"""Zero-shot evaluation of a pretraining run: image-text retrieval R@1/5/10 both ways from the
contrastive embeddings (optionally re-ranking each query's top k with the ITM head) and
zero-shot classification from prompt templates.

    python recipes/evaluate.py run_dir=runs/flava_like itm_rerank_k=16
    python recipes/evaluate.py run_dir=runs/flava_like pairs=/data/coco_val \
        zero_shot.images=/data/imagenet_val zero_shot.templates='["a photo of a {}"]'
"""

import sys

from onetower.evaluation.schema import EvaluateConfig
from onetower.evaluation.zero_shot import evaluate_run
from onetower.training.cli import run_recipe
from onetower.training.config import load_config

if __name__ == "__main__":
    run_recipe(lambda argv: evaluate_run(load_config(EvaluateConfig, argv)), sys.argv[1:])
