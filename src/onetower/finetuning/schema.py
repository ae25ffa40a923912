"""The fine-tuning recipes' config (``recipes/finetune_vqa.py``, ``recipes/finetune_nlvr2.py``):
the engine's ``run`` and ``train`` sections plus ``init``, ``model``, ``task``, ``data`` and
``eval``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onetower.training.schema import RunSection, TrainSection


@dataclass
class TaskSection:
    name: str = "vqa"  #: vqa | nlvr2
    #: null = train2014 (VQA) / train (NLVR2); VQA joins splits with "+": train2014+val2014
    #: trains on both, as the papers do for a test-dev / test-std submission
    train_split: str | None = None
    eval_splits: list[str] | None = None  #: null = [val2014] (VQA) / [dev] (NLVR2)
    min_answer_count: int = 9  #: VQA vocabulary: answers given for >= this many questions
    #: VQA vocabulary counted over these splits ("+"-joined); null = the training splits.
    #: ViLT counts train2014+val2014 at min_answer_count 9 (3,129 answers)
    vocab_splits: str | None = None
    #: VQA accuracy as the current official code computes it ("master", 2021: ground truth
    #: and prediction normalised when the 10 answers differ) or as before 2021 ("pre2021":
    #: prediction always normalised, ground truth only de-punctuated); see vqa_metric.py
    vqa_metric: str = "master"
    head_lr_mult: float = 10.0  #: the new head's lr = train.lr x this (ViLT: 10)
    #: what a new head reads: "cls" (ViLT: the pooled output) or "cls+patches" (plus the max
    #: and mean of the fused image-patch tokens; see onetower.task_models.pooled_features)
    classifier_pooling: str = "cls"
    #: how NLVR2's two images meet the statement: "pair" (ViLT: the statement with each image,
    #: pooled outputs concatenated) or "triplet" (UNITER: statement and both images in one
    #: sequence); see onetower.OneTowerConfig.multi_image_method
    multi_image_method: str = "pair"


@dataclass
class TaskSyntheticSection:
    root: str = "runs/synthetic_world"
    seed: int = 0
    vqa_train: int = 500  #: images (3 questions each)
    vqa_val: int = 100
    nlvr2_train: int = 500  #: image pairs (one statement each)
    nlvr2_val: int = 100


@dataclass
class TaskDataSection:
    root: str | None = None  #: the task's files (VQA v2 / NLVR2 layout); null = synthetic
    tokenizer: str | None = None  #: null = the one saved with ``init``, else the synthetic one
    synthetic: TaskSyntheticSection = field(default_factory=TaskSyntheticSection)
    batch_size: int = 32  #: per process
    num_workers: int = 0
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    #: fine-tune at this resolution (null = the pretrained model's): a learned position table
    #: is resampled to the new patch grid (ViLT pretrains at 384 and fine-tunes VQA at 384,
    #: BEiT-3 at 480); the saved model keeps the new size
    image_size: int | None = None
    #: random resized crops in training; off by default, as in ViLT's VQA / NLVR2 fine-tuning
    #: (a crop can cut off the object a question or a count is about)
    augment: bool = False
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    max_bad_fraction: float = 0.05
    #: keep decoded training samples in memory, up to this many MB per process, when
    #: ``augment`` is off (they are then the same every epoch); 0 = decode every time
    cache_mb: int = 2048


@dataclass
class TaskEvalSection:
    batch_size: int = 64
    max_samples: int = 0  #: per eval split; 0 = all


@dataclass
class FinetuneConfig:
    #: a saved onetower model: a pretrained encoder (a new head is added) or a task model of
    #: this task (fine-tuned further; with train.max_steps=0, only evaluated). null = random init
    init: str | None = None
    #: "pretrained" loads ``init``'s weights; "random" takes only its architecture (and
    #: tokenizer) and starts from fresh weights: the random-init baseline at equal architecture
    init_weights: str = "pretrained"
    run: RunSection = field(default_factory=RunSection)
    #: random init only (init=null): ``size`` plus any ``OneTowerConfig`` field
    model: dict[str, Any] = field(default_factory=lambda: {"size": "tiny"})
    task: TaskSection = field(default_factory=TaskSection)
    data: TaskDataSection = field(default_factory=TaskDataSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: TaskEvalSection = field(default_factory=TaskEvalSection)
