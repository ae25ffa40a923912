"""Zero-shot evaluation of a pretrained model with its objective heads.

- image-text retrieval R@1/5/10 both ways from the contrastive embeddings, optionally with the
  top-k re-ranked by the ITM head (ALBEF / BLIP style);
- zero-shot classification: each class name is put into prompt templates, the text
  embeddings are averaged over templates (CLIP's prompt ensembling), and each image takes the
  class of its nearest class embedding.

A pretraining run saves its heads (``objectives.safetensors``) next to the encoder in
``final/``, so these work from the run folder alone. ``recipes/evaluate.py`` runs
:func:`evaluate_run`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from onetower.data import (
    PairCollator,
    build_dataset,
    build_image_transform,
    keys,
    load_images,
    load_pairs,
    load_tokenizer,
)
from onetower.data.karpathy import RetrievalSplit, read_coco_captions, read_karpathy
from onetower.data.synthetic import RETRIEVAL_FILE, shape_labels
from onetower.finetuning.retrieval_eval import RERANK_SCORES, evaluate_retrieval
from onetower.modeling import OneTowerModel
from onetower.objectives import ContrastiveHead, ITMHead, ObjectiveComposer
from onetower.objectives.contrastive import image_features, text_features
from onetower.pretraining.build import build_composer
from onetower.pretraining.data import resolve_sources
from onetower.pretraining.evaluate import head_of
from onetower.pretraining.heads_io import HEADS_FILE, load_heads
from onetower.retrieval_metrics import recall_at_k
from onetower.training.config import ConfigError


def load_pretrained_run(run_dir: str | Path) -> tuple[DictConfig, ObjectiveComposer, Any]:
    """Rebuild a finished pretraining run: its config, the composer (encoder from ``final/``
    plus the saved heads) in eval mode, and the tokenizer.

    Raises:
        FileNotFoundError: the run folder lacks ``config.yaml``, ``final/`` or the heads file.
        ValueError: the heads file does not fit the heads the config builds.
    """
    run, final = Path(run_dir), Path(run_dir) / "final"
    for need in (run / "config.yaml", final / "config.json", final / HEADS_FILE):
        if not need.exists():
            raise FileNotFoundError(f"{run} is not a finished pretraining run: {need} is missing")
    cfg = OmegaConf.load(run / "config.yaml")
    composer = build_composer(cfg, OneTowerModel.from_pretrained(str(final)))
    load_heads(composer, final)
    return cfg, composer.eval(), load_tokenizer(str(final))


def _need(composer: ObjectiveComposer, cls: type, what: str) -> Any:
    head = head_of(composer, cls)
    if head is None:
        raise ConfigError(
            f"{what} needs a {cls.__name__}; this run trained {sorted(composer.heads)}"
        )
    return head


def _view(composer: ObjectiveComposer, batch: dict[str, torch.Tensor], kind: str) -> Any:
    """One planned view of ``batch`` (eval mode: no patch dropout)."""
    return composer.views(batch)[kind]


@torch.no_grad()
def embed_pairs(composer: ObjectiveComposer, batches: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised contrastive embeddings ``(image (N, E), text (N, E))`` of paired batches."""
    head = _need(composer, ContrastiveHead, "retrieval")
    images, texts = [], []
    for batch in batches:
        img, txt = head.embed(_view(composer, batch, "text"), _view(composer, batch, "image"))
        images.append(img.float())
        texts.append(txt.float())
    return torch.cat(images), torch.cat(texts)


@torch.no_grad()
def embed_texts(composer: ObjectiveComposer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """L2-normalised contrastive text embeddings `(B, E)`."""
    head = _need(composer, ContrastiveHead, "zero-shot classification")
    return F.normalize(
        head.text_proj(text_features(_view(composer, batch, "text"))).float(), dim=-1
    )


@torch.no_grad()
def embed_images(composer: ObjectiveComposer, pixels: torch.Tensor) -> torch.Tensor:
    """L2-normalised contrastive image embeddings `(B, E)`."""
    head = _need(composer, ContrastiveHead, "zero-shot classification")
    image = _view(composer, {keys.PIXEL_VALUES: pixels}, "image")
    return F.normalize(head.image_proj(image_features(image)).float(), dim=-1)


def itm_scorer(
    composer: ObjectiveComposer,
    ids: torch.Tensor,
    mask: torch.Tensor,
    pixels: torch.Tensor,
) -> Any:
    """``score(images (M,), texts (M,)) -> (M,)`` ITM log P(match) of (image, text) index pairs
    into ``pixels`` `(I, C, H, W)` and ``ids`` / ``mask`` `(T, L)`."""
    head = _need(composer, ITMHead, "ITM re-ranking")
    device = composer.model.device

    @torch.no_grad()
    def score(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        out = composer.model(
            input_ids=ids[txt].to(device),
            attention_mask=mask[txt].to(device),
            pixel_values=pixels[img].to(device),
        )
        logits = head.classifier(out.pooler_output).float()  # (M, 2)
        return logits.log_softmax(-1)[:, 1].cpu()

    return score


def contrastive_scale(composer: ObjectiveComposer) -> float:
    """The contrastive head's learned inverse temperature (similarity -> logit)."""
    return float(_need(composer, ContrastiveHead, "retrieval").scale().exp())


@torch.no_grad()
def itm_rerank(
    composer: ObjectiveComposer,
    sim: torch.Tensor,
    batches: list[dict],
    k: int,
    score: str = "itm+contrastive",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(i2t, t2i)`` scores where each query's top ``k`` by the image x text cosine ``sim``
    `(N, N)` are re-scored and placed above the other candidates (which keep their
    contrastive order).

    The re-ranking score is ITM's log P(match), plus with ``"itm+contrastive"`` (default) the
    contrastive logit (cosine x the head's learned scale): the two heads' log-likelihoods
    added. ITM alone (``"itm"``, ALBEF) only helps when its head orders near matches better
    than the similarity does: a head trained on random in-batch negatives (FLAVA / ViLT)
    learns to reject unrelated captions first (the demo's gives each image's contrastive
    runner-up P(match) 0.70 on average, its own caption 0.99), so alone it lowers R@1 (the
    demo's top 16: 82.0 / 78.5 -> 70.0 / 64.5).
    """
    if score not in RERANK_SCORES:
        raise ConfigError(f"itm_rerank_score must be one of {RERANK_SCORES}, got {score!r}")
    ids = torch.cat([b[keys.INPUT_IDS] for b in batches])
    mask = torch.cat([b[keys.ATTENTION_MASK] for b in batches])
    pixels = torch.cat([b[keys.PIXEL_VALUES] for b in batches])
    itm = itm_scorer(composer, ids, mask, pixels)
    weight = contrastive_scale(composer) if score == "itm+contrastive" else 0.0
    k = min(k, sim.shape[1])
    ranked = []
    for name, scores in (("i2t", sim), ("t2i", sim.t())):
        top = scores.topk(k, dim=1).indices  # (N, k)
        rows = torch.arange(scores.shape[0])[:, None].expand_as(top)
        q, c = rows.flatten(), top.flatten()
        img, txt = (q, c) if name == "i2t" else (c, q)
        new = torch.cat([itm(img[i : i + 256], txt[i : i + 256]) for i in range(0, len(q), 256)])
        new = new.view_as(top) + weight * scores.gather(1, top)  # (N, k)
        # re-ranked candidates sit above every other candidate, ordered by the new score
        out = scores - scores.max() - 1 + new.min()
        out[rows, top] = new
        ranked.append(out)
    return ranked[0], ranked[1]


def warn_if_rerank_lowers(metrics: dict[str, float], where: str) -> None:
    """Print a warning for each direction whose ``itm_rerank/<way>_r1`` is below ``<way>_r1``."""
    for way in ("i2t", "t2i"):
        before, after = metrics[f"{way}_r1"], metrics.get(f"itm_rerank/{way}_r1")
        if after is not None and after < before:
            print(
                f"warning: ITM re-ranking lowered {way} R@1 on {where} ({before:.1f} -> "
                f"{after:.1f}): this ITM head orders near matches no better than the "
                "contrastive similarity does, so the contrastive figure is this model's"
            )


@torch.no_grad()
def zero_shot_classify(
    composer: ObjectiveComposer,
    tokenizer: Any,
    max_len: int,
    pixels: torch.Tensor,
    labels: list[str],
    classes: list[str],
    templates: list[str],
) -> dict[str, float]:
    """Accuracy (%) of nearest-class-embedding classification, overall and per class."""
    if any("{}" not in t for t in templates):
        raise ConfigError(f"every template needs a '{{}}' for the class name: {templates}")
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ConfigError(f"labels {unknown[:5]} are not among the classes {classes}")
    prompts = [t.format(c) for c in classes for t in templates]
    enc = tokenizer(prompts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    txt = embed_texts(
        composer, {keys.INPUT_IDS: enc["input_ids"], keys.ATTENTION_MASK: enc["attention_mask"]}
    )
    class_emb = F.normalize(txt.view(len(classes), len(templates), -1).mean(1), dim=-1)  # (C, E)
    img = torch.cat(
        [embed_images(composer, pixels[i : i + 128]) for i in range(0, len(pixels), 128)]
    )
    pred = (img @ class_emb.t()).argmax(1)  # (N,)
    truth = torch.tensor([classes.index(y) for y in labels])
    out = {
        "zero_shot_acc": 100.0 * float((pred == truth).float().mean()),
        "zero_shot_chance": 100.0 / len(classes),
    }
    for i, c in enumerate(classes):
        if (sel := truth == i).any():
            out[f"zero_shot_acc/{c}"] = 100.0 * float((pred[sel] == i).float().mean())
    return out


def _held_out(cfg: DictConfig, run_cfg: DictConfig) -> tuple[Any, Path | None]:
    """The held-out pairs source and, for the synthetic world, its folder."""
    from accelerate import PartialState

    if cfg.pairs is not None:
        if not Path(cfg.pairs).exists():
            raise FileNotFoundError(f"pairs: {cfg.pairs!r} does not exist")
        return load_pairs(cfg.pairs, split="validation"), None
    paths, _ = resolve_sources(run_cfg, PartialState())
    return load_pairs(paths["val_pairs"], split="validation"), Path(paths["val_pairs"])


def _zero_shot_set(
    cfg: DictConfig, pairs: Any, transform: Any, n: int, pairs_are_users: bool
) -> tuple[Any, list[str]]:
    """``(dataset of images, labels)`` for zero-shot classification."""
    z = cfg.zero_shot
    if z.images is not None:
        src = load_images(z.images, split="validation")
        if z.label_column not in src.dataset.column_names:
            raise ConfigError(f"zero_shot.images has no {z.label_column!r} column")
        src = replace(src, extra_columns=(z.label_column,))
        ds = build_dataset(src, transform)
        samples = [s for s in (ds[i] for i in range(min(n, len(ds)))) if s is not None]
        return samples, [str(s[z.label_column]) for s in samples]
    if pairs_are_users:
        raise ConfigError(
            "zero_shot.images is not set: name a labelled image folder, or zero_shot.images=none"
        )
    # the built-in world: the held-out images whose caption names one kind of shape
    labels = shape_labels(pairs.dataset[pairs.text_column][:n])
    ds = build_dataset(pairs, transform)
    rows = [i for i in labels if ds[i] is not None]
    return [ds[i] for i in rows], [labels[i] for i in rows]


def read_retrieval_split(file: str | Path, split: str, image_root: str | None) -> RetrievalSplit:
    """A Karpathy split file or COCO captions annotations, told apart by their layout."""
    path = Path(file)
    if not path.exists():
        raise ConfigError(f"retrieval.file: {path} does not exist")
    head = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(head, dict) and "annotations" in head:
        if image_root is None:
            raise ConfigError("retrieval.image_root: COCO captions need the images' folder")
        return read_coco_captions(path, image_root)
    return read_karpathy(path, split, image_root)


def _retrieval_split(r: DictConfig, users: bool, world: Path | None) -> RetrievalSplit | None:
    if r.file == "none":
        return None
    if r.file is None:
        if users or world is None:
            return None  # a user-data run names its grouped split explicitly
        file = world.parent.parent / "retrieval" / RETRIEVAL_FILE
        if not file.exists():
            return None  # a world written before the grouped split existed
        split = read_karpathy(file, r.split)
    else:
        split = read_retrieval_split(r.file, r.split, r.image_root)
    return split.head(r.max_images) if r.max_images else split


def evaluate_run(cfg: DictConfig) -> dict[str, float]:
    """Retrieval (R@1/5/10, optional ITM re-ranking) and zero-shot classification of a
    pretraining run; prints a table and writes the metrics JSON."""
    run_cfg, composer, tokenizer = load_pretrained_run(cfg.run_dir)
    d = run_cfg.data
    transform = build_image_transform(d.image_size, False, mean=tuple(d.mean), std=tuple(d.std))
    pairs, world = _held_out(cfg, run_cfg)
    ds = build_dataset(pairs, transform)
    collate = PairCollator(tokenizer, d.max_text_len, pad_to_max_length=True)
    samples = [s for s in (ds[i] for i in range(min(cfg.max_samples, len(ds)))) if s is not None]
    batches = [
        collate(samples[i : i + cfg.batch_size]) for i in range(0, len(samples), cfg.batch_size)
    ]
    captions = [s["text"] for s in samples]
    image, text = embed_pairs(composer, batches)
    sim = image @ text.t()  # (N, N)
    metrics = recall_at_k(sim, sim.t(), captions)
    metrics["retrieval_chance_r1"] = 100.0 / len(captions)
    if cfg.itm_rerank_k > 0:
        i2t, t2i = itm_rerank(composer, sim, batches, cfg.itm_rerank_k, cfg.itm_rerank_score)
        reranked = recall_at_k(i2t, t2i, captions)
        metrics |= {f"itm_rerank/{k}": v for k, v in reranked.items()}
        warn_if_rerank_lowers(metrics, "the held-out pairs")
    split = _retrieval_split(cfg.retrieval, cfg.pairs is not None or d.pairs is not None, world)
    if split is not None:
        grouped = evaluate_retrieval(
            composer,
            split,
            tokenizer,
            transform,
            d.max_text_len,
            cfg.itm_rerank_k,
            cfg.itm_rerank_score,
            cfg.batch_size,
        )
        metrics |= {f"karpathy/{k}": v for k, v in grouped.items()}
        warn_if_rerank_lowers(grouped, f"the Karpathy {cfg.retrieval.split} split")
    if cfg.zero_shot.images != "none":
        users = cfg.pairs is not None or run_cfg.data.pairs is not None
        images, labels = _zero_shot_set(cfg, pairs, transform, cfg.max_samples, users)
        classes = list(cfg.zero_shot.classes or sorted(set(labels)))
        pixels = torch.stack([s["pixel_values"] for s in images])
        metrics |= zero_shot_classify(
            composer,
            tokenizer,
            d.max_text_len,
            pixels,
            labels,
            classes,
            list(cfg.zero_shot.templates),
        )
    out = Path(cfg.output or Path(cfg.run_dir) / "eval_metrics.json")
    out.write_text(json.dumps(metrics, indent=1))
    width = max(map(len, metrics))
    print("\n".join(f"{k:<{width}}  {v:6.2f}" for k, v in metrics.items()))
    print(f"({len(captions)} held-out pairs; metrics written to {out})")
    return metrics
