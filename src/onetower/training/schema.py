"""The engine's config sections, shared by every recipe: ``run`` (output folder, seed, resume,
tracker, device) and ``train`` (steps, optimizer, schedule, precision, log / eval / checkpoint
intervals). Each room adds its own sections and root (``onetower.pretraining.schema``,
``onetower.finetuning.schema``); a typo in any fixed key is an error that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    #: checkpoint every N optimizer steps; a checkpoint is also written at the end of training
    #: (so a finished run can be trained further) and when a signal stops the run; 0 = only then
    save_every: int = 500
    #: also checkpoint once this many minutes have passed since the last checkpoint; 0 = off
    save_every_minutes: float = 30.0
    keep_last: int = 2  #: checkpoints kept (older ones are deleted)
    stop_at: int = (
        0  #: end early at this step with a checkpoint, as a preempted job would (0 = never)
    )
    compile: bool = False
    activation_checkpointing: bool = False
