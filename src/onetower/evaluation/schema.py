"""The zero-shot evaluation recipe's config (``recipes/evaluate.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
