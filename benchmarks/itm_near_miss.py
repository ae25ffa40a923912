"""Can a pretrained model's ITM head re-rank retrieval? Its discrimination of near misses.

ITM re-ranking reorders each query's top k by contrastive similarity, so it can only help when
the ITM head tells a pair from the pairs contrastive retrieval confuses it with. This measures,
on a finished pretraining run's held-out pairs:

- ITM's AUC of matched pairs against random pairs (what ITM on random negatives learns) and
  against each image's contrastive runner-up caption (what re-ranking needs; 0.5 = no help);
- how many runner-ups are word-for-word the image's own caption (false negatives);
- what the contrastive head's image-to-text misses get wrong: each true caption against the
  caption ranked first instead (same colours but other shapes, the same objects in another
  relation or place, a colour-shape binding swap, another size, other colours or count);
- a linear probe (L-BFGS logistic regression on the image tower's token states) for the shape of
  the training images whose caption names one shape, scored on the held-out ones: whether the
  image side encodes shape at all, independently of what the heads align.

    .venv/bin/python benchmarks/itm_near_miss.py runs/flava_like
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

import torch
import torch.nn.functional as F
from _common import json_path, write_json
from accelerate import PartialState

from onetower.data import PairCollator, build_dataset, build_image_transform, keys, load_pairs
from onetower.data.synthetic import shape_labels
from onetower.data.world import COLOURS, SHAPES, SIZES
from onetower.evaluation.zero_shot import _view, embed_pairs, itm_scorer, load_pretrained_run
from onetower.pretraining.data import resolve_sources

#: one object of a world caption: (size, colour, shape)
OBJECT = re.compile(rf"({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})")
MISS_KINDS = (
    "other_shapes",
    "other_relation_or_place",
    "binding_swap",
    "other_sizes",
    "other_colours_or_count",
)


def auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(a random positive scores above a random negative), ties counted half."""
    diff = positive[:, None] - negative[None, :]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def near_miss(run: str, n: int) -> dict[str, float]:
    cfg, composer, tokenizer = load_pretrained_run(run)
    d = cfg.data
    transform = build_image_transform(d.image_size, False, mean=tuple(d.mean), std=tuple(d.std))
    paths, _ = resolve_sources(cfg, PartialState())
    ds = build_dataset(load_pairs(paths["val_pairs"], split="validation"), transform)
    samples = [s for s in (ds[i] for i in range(min(n, len(ds)))) if s is not None]
    collate = PairCollator(tokenizer, d.max_text_len, pad_to_max_length=True)
    batches = [collate(samples[i : i + 100]) for i in range(0, len(samples), 100)]
    image, text = embed_pairs(composer, batches)
    sim = image @ text.t()  # (N, N)
    N = sim.shape[0]
    rows = torch.arange(N)
    runner_up = sim.masked_fill(torch.eye(N, dtype=torch.bool), float("-inf")).argmax(1)
    score = itm_scorer(
        composer,
        torch.cat([b[keys.INPUT_IDS] for b in batches]),
        torch.cat([b[keys.ATTENTION_MASK] for b in batches]),
        torch.cat([b[keys.PIXEL_VALUES] for b in batches]),
    )
    matched = score(rows, rows)
    shuffled = score(rows, torch.randperm(N, generator=torch.Generator().manual_seed(0)))
    near = score(rows, runner_up)
    captions = [s["text"] for s in samples]
    same = torch.tensor([captions[i] == captions[j] for i, j in enumerate(runner_up.tolist())])
    misses = Counter(
        miss_kind(captions[i], captions[j])
        for i, j in enumerate(sim.argmax(1).tolist())
        if captions[i] != captions[j]
    )
    return {
        "pairs": N,
        "p_match_matched": float(matched.exp().mean()),
        "p_match_random": float(shuffled.exp().mean()),
        "p_match_runner_up": float(near.exp().mean()),
        "auc_vs_random": auc(matched, shuffled),
        "auc_vs_runner_up": auc(matched[~same], near[~same]),
        "runner_up_same_caption": float(same.float().mean()),
        "contrastive_i2t_misses": sum(misses.values()),
        **{f"misses_{kind}": misses[kind] for kind in MISS_KINDS},
    }


def miss_kind(truth: str, wrong: str) -> str:
    """How the caption ranked first differs from the image's own, by the world's grammar."""
    a, b = OBJECT.findall(truth), OBJECT.findall(wrong)  # [(size, colour, shape)]

    def same(*fields: int) -> bool:
        return sorted(tuple(o[f] for f in fields) for o in a) == sorted(
            tuple(o[f] for f in fields) for o in b
        )

    if same(0, 1, 2):
        return "other_relation_or_place"
    if same(1, 2):
        return "other_sizes"
    if same(1):
        return "binding_swap" if same(2) else "other_shapes"
    return "other_colours_or_count"


def shape_probe(run: str, n_train: int, n_val: int) -> dict[str, float]:
    cfg, composer, _ = load_pretrained_run(run)
    d = cfg.data
    transform = build_image_transform(d.image_size, False, mean=tuple(d.mean), std=tuple(d.std))
    paths, _ = resolve_sources(cfg, PartialState())

    def features(path: str, split: str, n: int) -> tuple[torch.Tensor, list[str]]:
        pairs = load_pairs(path, split=split)
        labels = shape_labels(pairs.dataset[pairs.text_column][:n])  # {row: shape}
        ds = build_dataset(pairs, transform)
        rows = sorted(labels)
        pixels = torch.stack([ds[i]["pixel_values"] for i in rows])
        with torch.no_grad():
            out = _view(composer, {keys.PIXEL_VALUES: pixels}, "image")
        states = out.unimodal_states.get("image", out.last_hidden_state)
        return states.flatten(1), [labels[i] for i in rows]

    x_train, y_train = features(paths["pairs"], "train", n_train)
    x_val, y_val = features(paths["val_pairs"], "validation", n_val)
    classes = sorted(set(y_train))
    t_train = torch.tensor([classes.index(y) for y in y_train])
    t_val = torch.tensor([classes.index(y) for y in y_val])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    w = torch.zeros(x_train.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x_train @ w + b, t_train) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        acc = float(((x_val @ w + b).argmax(1) == t_val).float().mean()) * 100
    return {
        "shape_probe_val_acc": acc,
        "shape_probe_train_images": len(y_train),
        "shape_probe_val_images": len(y_val),
        "shape_probe_chance": 100.0 / len(classes),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="a finished pretraining run on the synthetic world")
    p.add_argument("--pairs", type=int, default=200, help="held-out pairs scored")
    p.add_argument("--json", default=json_path("itm_near_miss"), help="where to write the record")
    a = p.parse_args()
    record = {"run_dir": a.run_dir, **near_miss(a.run_dir, a.pairs)}
    record |= shape_probe(a.run_dir, 2000, a.pairs)
    for k, v in record.items():
        print(f"{k:32s} {v:.3f}" if isinstance(v, float) else f"{k:32s} {v}")
    write_json(a.json, record)


if __name__ == "__main__":
    main()
