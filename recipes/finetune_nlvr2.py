"""Fine-tune on NLVR2 with ViLT's pair method: the statement is encoded with each image
(image segment ids 1 and 2, the new segment row copied from the image row), the two pooled
outputs are concatenated and classified true / false.

    accelerate launch recipes/finetune_nlvr2.py init=runs/flava_like/final [key=value ...]
    accelerate launch recipes/finetune_nlvr2.py init=runs/flava_like/final data.root=/data/nlvr2 \
        data.tokenizer=/models/bert-tok task.eval_splits=[dev,test1]

By default it fine-tunes on the synthetic world's NLVR2 files. Writes ``final/``,
``predictions_<split>.csv`` (``identifier,prediction``) and ``metrics.json`` (accuracy).
"""

import sys
from pathlib import Path

from onetower.finetuning import FinetuneConfig, finetune
from onetower.training.cli import run_recipe
from onetower.training.config import load_config

CONFIG = Path(__file__).parent / "configs" / "finetune_nlvr2.yaml"

if __name__ == "__main__":
    run_recipe(lambda argv: finetune(load_config(FinetuneConfig, argv, CONFIG)), sys.argv[1:])
