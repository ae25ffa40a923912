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
class RetrievalSection:
    #: images grouped with their captions: a Karpathy split file (dataset_coco.json /
    #: dataset_flickr30k.json) or COCO captions annotations (captions_val2014.json); null = the
    #: synthetic world's grouped-caption split for a synthetic run; "none" = skip
    file: str | None = None
    split: str = "test"  #: Karpathy split (test = the papers' COCO 5k / Flickr30K 1k)
    image_root: str | None = None  #: folder image paths are relative to; null = the file's
    max_images: int = 0  #: first N images with all their captions; 0 = all


@dataclass
class EvaluateConfig:
    run_dir: str = "runs/flava_like"  #: a finished pretraining run (config.yaml + final/)
    pairs: str | None = None  #: held-out pairs; null = the run's own held-out pairs
    max_samples: int = 1000  #: pairs in the retrieval gallery
    batch_size: int = 100
    itm_rerank_k: int = 0  #: re-rank each query's top k with the ITM head (0 = off)
    #: re-ranking score: "itm+contrastive" (ITM log P(match) + the contrastive logit, as BLIP
    #: adds the similarity) or "itm" (ALBEF: ITM alone; needs an ITM head trained on hard
    #: negatives)
    itm_rerank_score: str = "itm+contrastive"
    #: Karpathy-protocol retrieval (R@1/5/10 both ways, chance, ITM re-ranking), reported
    #: under karpathy/...
    retrieval: RetrievalSection = field(default_factory=RetrievalSection)
    zero_shot: ZeroShotSection = field(default_factory=ZeroShotSection)
    output: str | None = None  #: metrics JSON; null = <run_dir>/eval_metrics.json
