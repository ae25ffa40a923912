"""The recipe config schema: every knob a pretraining run has, with its default.

Sections ``model`` (fields of :class:`~onetower.OneTowerConfig` plus ``size`` and ``init``)
and ``objectives`` (``{head: {weight: w, **options}}``) are open dicts checked by their owners;
everything else is fixed here, so a typo is an error that names the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunSection:
    recipe: str = "pretrain"  #: recipe name; an output dir is bound to one recipe
    output_dir: str = "runs/pretrain"
    seed: int = 0
    resume: str | None = None  #: null | latest | path to a checkpoints/step_N folder
    overwrite: bool = False  #: allow reusing an output dir of the same recipe from scratch
    tracker: str = "tensorboard"  #: tensorboard | wandb | none
    cpu: bool = False  #: force CPU even when CUDA is available
    #: CPU threads per process; 0 = this machine's cores / local processes (accelerate launch
    #: would otherwise leave a CPU run without --cpu on one thread)
    cpu_threads: int = 0


@dataclass
class SyntheticSection:
    root: str = "runs/synthetic_world"
    seed: int = 0
    n_train: int = 2000
    n_val: int = 200


@dataclass
class DataSection:
    pairs: str | None = (
        None  #: image-text pairs (imagefolder / JSONL / Parquet / tar); null = synthetic
    )
    texts: str | None = None  #: text-only source; null = the pairs' captions (when ratio > 0)
    images: str | None = None  #: image-only source; null = the pairs' images (when ratio > 0)
    val_pairs: str | None = None  #: held-out pairs; null = the synthetic validation split
    tokenizer: str | None = None  #: local fast-tokenizer folder; null = the synthetic one
    synthetic: SyntheticSection = field(default_factory=SyntheticSection)
    ratios: dict[str, float] = field(default_factory=lambda: {"pairs": 1.0})
    image_size: int = 64
    max_text_len: int = 24
    batch_size: int = 32  #: per process
    num_workers: int = 0
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    mlm_probability: float = 0.15
    whole_word_mask: bool = False
    mask_ratio: float = 0.0  #: fraction of patches masked for MIM (0 = no image masking)
    block_mask: bool = False  #: BEiT block-wise masking instead of random patches
    max_bad_fraction: float = 0.05


@dataclass
class TrainSection:
    max_steps: int = 1000  #: optimizer steps
    lr: float = 5e-4
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.05
    warmup_steps: int = 100
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    grad_clip: float = 1.0  #: 0 = off
    grad_accum: int = 1
    mixed_precision: str = "no"  #: no | bf16 | fp16
    log_every: int = 10
    eval_every: int = 0  #: 0 = only at the end
    save_every: int = 0  #: 0 = only the final model
    keep_last: int = 2
    stop_at: int = (
        0  #: end early at this step with a checkpoint, as a preempted job would (0 = never)
    )
    compile: bool = False
    activation_checkpointing: bool = False


@dataclass
class EvalSection:
    max_samples: int = 200  #: held-out pairs used for losses, retrieval and colour-word MLM
    batch_size: int = 50
    reconstructions: int = 6  #: MIM recipes: images in the reconstruction grid


@dataclass
class PretrainConfig:
    run: RunSection = field(default_factory=RunSection)
    model: dict[str, Any] = field(default_factory=lambda: {"size": "tiny"})
    objectives: dict[str, Any] = field(default_factory=dict)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)


# --- fine-tuning (recipes/finetune_vqa.py, recipes/finetune_nlvr2.py) ---


@dataclass
class TaskSection:
    name: str = "vqa"  #: vqa | nlvr2
    train_split: str | None = None  #: null = train2014 (VQA) / train (NLVR2)
    eval_splits: list[str] | None = None  #: null = [val2014] (VQA) / [dev] (NLVR2)
    min_answer_count: int = 9  #: VQA vocabulary: answers given for >= this many questions
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


# --- zero-shot evaluation of a pretraining run (recipes/evaluate.py) ---


@dataclass
class ZeroShotSection:
    #: imagefolder / JSONL of images with a label column; null = the synthetic held-out
    #: images whose caption names a single shape, labelled with it; "none" = skip
    images: str | None = None
    label_column: str = "label"
    classes: list[str] | None = None  #: null = every label found
    templates: list[str] = field(default_factory=lambda: ["a small {}", "a large {}"])


@dataclass
class EvaluateConfig:
    run_dir: str = "runs/flava_like"  #: a finished pretraining run (config.yaml + final/)
    pairs: str | None = None  #: held-out pairs; null = the run's own held-out pairs
    max_samples: int = 1000  #: pairs in the retrieval gallery
    batch_size: int = 100
    itm_rerank_k: int = 0  #: re-rank each query's top k with the ITM head (0 = off)
    zero_shot: ZeroShotSection = field(default_factory=ZeroShotSection)
    output: str | None = None  #: metrics JSON; null = <run_dir>/eval_metrics.json
