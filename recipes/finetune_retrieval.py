"""Fine-tune image-text retrieval (ALBEF / BLIP / ViLT): the pretrained encoder with a
contrastive head and an ITM head on hard negatives mined from the contrastive similarities
(ALBEF), evaluated by the Karpathy protocol (R@1/5/10 both ways, each query's top k re-ranked
by ITM).

    accelerate launch recipes/finetune_retrieval.py init=runs/flava_like/final
    accelerate launch recipes/finetune_retrieval.py init=runs/flava_like/final \
        data.file=/data/karpathy/dataset_coco.json data.image_root=/data/coco \
        data.train_splits=[train,restval] eval.rerank_k=128
    accelerate launch recipes/finetune_retrieval.py init=runs/flava_like/final \
        data.file=/data/karpathy/dataset_flickr30k.json data.image_root=/data/flickr30k-images

By default it fine-tunes on the synthetic world's grouped-caption split. Writes ``final/``
(encoder + heads), ``predictions_<split>.json`` (each query's top 10) and ``metrics.json``.
"""

import sys
from pathlib import Path

from onetower.finetuning.retrieval import FinetuneRetrievalConfig, finetune_retrieval
from onetower.training.cli import run_recipe
from onetower.training.config import load_config

CONFIG = Path(__file__).parent / "configs" / "finetune_retrieval.yaml"

if __name__ == "__main__":
    run_recipe(
        lambda argv: finetune_retrieval(load_config(FinetuneRetrievalConfig, argv, CONFIG)),
        sys.argv[1:],
    )
