"""Run folders as the recipes leave them, for the model-card and push tests: the run records
(``metrics.json``, one layout for pretraining and fine-tuning), config.yaml and final/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onetower import OneTowerConfig, OneTowerModel, OneTowerProcessor
from onetower.data import train_wordpiece_tokenizer
from onetower.hub import prepare_model_folder

RUN_YAML = """run:
  recipe: flava_like
  output_dir: {out}
objectives:
  mlm:
    weight: 1.0
  itm:
    weight: 0.5
data:
  pairs: null
  synthetic:
    root: runs/synthetic_world
  image_size: 32
  max_text_len: 16
  mean: [0.4, 0.45, 0.5]
  std: [0.2, 0.25, 0.3]
"""
METRICS = {"eval/i2t_r1": 0.375, "eval/mlm_loss": 1.25, "eval/bad": float("nan")}
#: The run records (``metrics.json``) the engine writes, one layout for every recipe.
PRETRAIN_RECORD = {
    "recipe": "flava_like",
    "task": "pretraining",
    "model_class": "OneTowerModel",
    "steps": 30,
    "world_size": 1,
    "distributed_type": "NO",
    "mixed_precision": "no",
    "train_seconds": 12.5,
    "samples_per_s": 40.0,
    "replicas_identical": True,
    "init": None,
    "metrics": METRICS,
    "data": {
        "sources": [],
        "tags": ["synthetic-data"],
        "description": "Generated scenes of coloured shapes with template captions.",
        "limitations": "Trained on synthetic data only: not for natural images.",
    },
    "skipped": {},
    "summary": "Pretrained flava_like for 30 steps.",
}
VQA_RECORD = {
    "recipe": "finetune_vqa",
    "task": "vqa",
    "model_class": "OneTowerForQuestionAnswering",
    "steps": 2000,
    "world_size": 1,
    "distributed_type": "NO",
    "mixed_precision": "no",
    "train_seconds": 300.1,
    "samples_per_s": 210.0,
    "replicas_identical": True,
    "init": "runs/flava_like/final",
    "metrics": {"val2014/vqa_acc": 93.1, "val2014/vqa_acc_yes_no": 99.0},
    "data": {
        "sources": ["/data/vqa"],
        "description": "VQA v2 files in /data/vqa.",
        "limitations": None,
    },
    "skipped": {"unreadable_image": 2},
    "summary": "Fine-tuned vqa from runs/flava_like/final.",
}
NLVR2_RECORD = {
    **VQA_RECORD,
    "recipe": "finetune_nlvr2",
    "task": "nlvr2",
    "model_class": "OneTowerForImagesAndTextClassification",
    "metrics": {"dev/accuracy": 0.75, "test1/accuracy": 0.5},
    "data": {"sources": ["/data/nlvr2"], "description": "NLVR2 files in /data/nlvr2."},
    "skipped": {},
}


@pytest.fixture(scope="session")
def tokenizer():
    texts = ["a red circle left of a blue square", "a green triangle above a star"]
    return train_wordpiece_tokenizer(texts, vocab_size=128, model_max_length=16)


def make_run(
    root: Path,
    tokenizer,
    model_cls=OneTowerModel,
    extra=None,
    processor=True,
    record=PRETRAIN_RECORD,
    prepared=True,
) -> Path:
    """A run folder as a recipe leaves it: config.yaml, metrics.json, final/ (returned) with
    the remote code and the card when ``prepared`` (older runs have neither)."""
    torch.manual_seed(0)
    config = OneTowerConfig.from_size("tiny", num_hidden_layers=1, **(extra or {}))
    final = root / "final"
    model_cls(config).save_pretrained(final)
    tokenizer.save_pretrained(str(final))
    if processor:
        OneTowerProcessor.from_config(
            tokenizer, image_size=32, max_text_len=16, mean=(0.4, 0.45, 0.5), std=(0.2, 0.25, 0.3)
        ).save_pretrained(final)
    (root / "config.yaml").write_text(RUN_YAML.format(out=root))
    (root / "metrics.json").write_text(json.dumps(record))
    if prepared:
        prepare_model_folder(final, root)
    return final


def finite_metrics(record: dict) -> dict[str, float]:
    return {k: v for k, v in record["metrics"].items() if v == v}  # NaN != NaN
