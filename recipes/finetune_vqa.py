"""Fine-tune on VQA v2: ViLT's head (Linear-LN-GELU-Linear on the pooled output) and soft-score
BCE over the answer vocabulary; scored with the official VQA accuracy.

    accelerate launch recipes/finetune_vqa.py init=runs/flava_like/final [key=value ...]
    accelerate launch recipes/finetune_vqa.py init=runs/flava_like/final data.root=/data/vqa \
        data.tokenizer=/models/bert-tok task.eval_splits=[val2014]

By default it fine-tunes on the synthetic world's VQA files. Writes ``final/`` (model,
tokenizer, processor), ``predictions_<split>.json`` in the official results format and
``metrics.json`` (overall and per answer type).
"""

import sys
from pathlib import Path

from onetower.finetuning import FinetuneConfig, finetune
from onetower.training.cli import run_recipe
from onetower.training.config import load_config

CONFIG = Path(__file__).parent / "configs" / "finetune_vqa.yaml"

if __name__ == "__main__":
    run_recipe(lambda argv: finetune(load_config(FinetuneConfig, argv, CONFIG)), sys.argv[1:])
