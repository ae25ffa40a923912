"""How learnable are the synthetic NLVR2 labels with perfect perception?

A calibration for ``recipes/finetune_nlvr2.py``: a learner that is *given* what the images hold,
as exact numbers, and has to learn only what the statements mean from the same one-bit labels.
Each example is the statement's tokens plus two tokens carrying the left and right scene's
attribute counts (how many shapes of each colour and of each shape), through a pre-LN
transformer of the fine-tuned encoder's width (CLS -> ViLT's classifier head), trained with the
recipe's optimiser and schedule (AdamW, 10x lr on the head, warm-up then cosine, clip at 1).
No end-to-end model, which has to find and count the shapes itself, should expect more than
this at the same number of examples seen: it bounds what any encoder (pretrained or not) can
bring to the fine-tuning at that budget.

The scenes come from ``onetower.data.synthetic.nlvr2_examples``: the same train and dev
statements the recipe's files hold for that seed (dev = the first 200 validation examples);
"held-out" is 2000 validation examples (about +-1 point where dev's 200 are +-3.5).

    .venv/bin/python benchmarks/nlvr2_oracle.py                       # 4 layers, 1000/2000/4000 steps
    .venv/bin/python benchmarks/nlvr2_oracle.py --layers 2 --steps 2000 4000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from _common import environment, json_path, write_json
from torch import nn

from onetower.data import train_wordpiece_tokenizer
from onetower.data.synthetic import nlvr2_examples
from onetower.data.world import COLOURS, SHAPES, Scene
from onetower.data.world_tasks import STATEMENT_KINDS, NLVR2Example
from onetower.task_models import classifier_mlp
from onetower.training.optim import build_optimizer, build_scheduler


def scene_counts(scene: Scene) -> list[int]:
    """What perfect perception reports: shapes per colour, then per shape."""
    return [scene.count(colour=c) for c in COLOURS] + [scene.count(shape=s) for s in SHAPES]


class Split:
    """Token ids `(N, T)`, attribute counts `(N, 2, A)`, labels `(N,)` and kinds of examples."""

    def __init__(self, examples: Sequence[NLVR2Example], tokenizer, max_len: int) -> None:
        enc = tokenizer(
            [ex.sentence for ex in examples],
            padding="max_length",
            max_length=max_len,
            truncation=True,
            return_tensors="pt",
        )
        self.ids, self.mask = enc["input_ids"], enc["attention_mask"].bool()
        self.counts = torch.tensor(
            [[scene_counts(ex.left), scene_counts(ex.right)] for ex in examples],
            dtype=torch.float,
        )
        self.labels = torch.tensor([ex.label for ex in examples], dtype=torch.long)
        self.kinds = [ex.kind for ex in examples]

    def __len__(self) -> int:
        return len(self.labels)


class PerfectPerceptionClassifier(nn.Module):
    """``[statement tokens ; left counts ; right counts]`` -> pre-LN transformer -> CLS -> head."""

    def __init__(
        self, vocab: int, num_counts: int, max_len: int, dim: int, layers: int, heads: int
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.counts = nn.Linear(num_counts, dim)  # one token per image
        self.positions = nn.Parameter(torch.randn(max_len + 2, dim) * 0.02)  # images: 2 slots
        block = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.classifier = classifier_mlp(dim, 2)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.tokens(ids), self.counts(counts)], dim=1) + self.positions
        pad = torch.cat([~mask, mask.new_zeros(mask.shape[0], counts.shape[1])], dim=1)
        x = self.norm(self.encoder(x, src_key_padding_mask=pad))
        return self.classifier(x[:, 0])  # the statement's [CLS]


@torch.no_grad()
def accuracy(model: nn.Module, split: Split) -> dict[str, float]:
    model.eval()
    pred = torch.cat(
        [
            model(
                split.ids[i : i + 500], split.mask[i : i + 500], split.counts[i : i + 500]
            ).argmax(-1)
            for i in range(0, len(split), 500)
        ]
    )
    model.train()
    right = pred == split.labels
    out = {"acc": round(100 * right.float().mean().item(), 1)}
    for kind in STATEMENT_KINDS:
        sel = torch.tensor([k == kind for k in split.kinds])
        out[kind] = round(100 * right[sel].float().mean().item(), 1)
    return out


def run(a: argparse.Namespace, steps: int, data: dict[str, Split], vocab: int) -> dict:
    torch.manual_seed(a.seed)
    model = PerfectPerceptionClassifier(
        vocab, data["train"].counts.shape[-1], a.max_len, a.dim, a.layers, a.heads
    )
    opt = build_optimizer(model, a.lr, 0.01, head_prefixes=("classifier.",), head_lr_mult=10.0)
    sched = build_scheduler(opt, a.warmup, steps)
    train, g = data["train"], torch.Generator().manual_seed(a.seed)
    order, pos, t0 = torch.randperm(len(train), generator=g), 0, time.perf_counter()
    for _ in range(steps):  # epochs of shuffled batches, as the recipe's loader
        if pos + a.batch > len(train):
            order, pos = torch.randperm(len(train), generator=g), 0
        b = order[pos : pos + a.batch]
        pos += a.batch
        loss = F.cross_entropy(model(train.ids[b], train.mask[b], train.counts[b]), train.labels[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    row = {
        "steps": steps,
        "examples_seen": steps * a.batch,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    for name in ("dev", "held_out", "train"):
        row[name] = accuracy(model, data[name])
    print(
        f"{steps:>6} steps ({steps * a.batch} examples, {row['seconds']:.0f} s): "
        f"dev {row['dev']}  held-out {row['held_out']}",
        flush=True,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[1000, 2000, 4000],
        help="one run (own schedule) per budget",
    )
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument(
        "--layers",
        type=int,
        default=4,
        help="4 = the fine-tuned encoder's text tower (2) + fusion (2) layers",
    )
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--max-len", type=int, default=24)
    p.add_argument("--seed", type=int, default=0, help="the world's seed (and the run's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=json_path("nlvr2_oracle"), help="where to write the record")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    train = nlvr2_examples(a.seed, "train", a.n_train)
    held_out = nlvr2_examples(a.seed, "validation", 2000)
    tokenizer = train_wordpiece_tokenizer(ex.sentence for ex in train + held_out)
    data = {
        "train": Split(train, tokenizer, a.max_len),
        "dev": Split(held_out[:200], tokenizer, a.max_len),
        "held_out": Split(held_out, tokenizer, a.max_len),
    }
    runs = [run(a, steps, data, len(tokenizer)) for steps in a.steps]
    record = {"config": vars(a), "runs": runs, "environment": environment(torch.device("cpu"))}
    write_json(a.json, record)


if __name__ == "__main__":
    main()
