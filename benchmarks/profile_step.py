"""Profile one training step of a recipe: where the time goes, host syncs, per-sample loops.

Prints the top ops by self CPU time of one full step (after warm-up) and two checks on the
composer forward: the sync ops it calls (``aten::item`` / ``_local_scalar_dense``: a host
sync; ``aten::nonzero``: a data-dependent shape, a sync on CUDA) and its op count at two batch
sizes: equal counts mean no Python loop over the batch.

    .venv/bin/python benchmarks/profile_step.py [--recipe vilt_like] [--batch 32] [--rows 20]
"""

from __future__ import annotations

import argparse
from collections import Counter

from _common import autocast, pick_device, recipe_step, size_overrides, tokenizer
from torch.profiler import ProfilerActivity, profile

from onetower.data.batch_masking import step_generator

SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero")


def forward_ops(c, device) -> Counter:
    """Op-name counts over one composer forward (masks drawn before, outside the count)."""
    composer = c.module
    batch = c.last_batch()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof, autocast(device):
        composer(batch, generator=step_generator(1, 0))
    return Counter(e.name for e in prof.events())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="vilt_like")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--rows", type=int, default=20)
    p.add_argument("--device", default=None)
    a = p.parse_args()
    device = pick_device(a.device)
    tok = tokenizer()
    size = size_overrides(a.width, 4, 4, 64, 16)
    if a.recipe == "flava_like":  # towers and fusion of 2 layers each, as train_step.py
        size += [
            "model.num_hidden_layers=2",
            "model.text_tower_layers=2",
            "model.image_tower_layers=2",
        ]
    c = recipe_step(a.recipe, size, a.batch, device, tok)
    for _ in range(2):
        c.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        c.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))

    counts = {}
    for b in (a.batch // 2, a.batch):
        small = recipe_step(a.recipe, size, b, device, tok)
        small.step()
        counts[b] = forward_ops(small, device)
    big = counts[a.batch]
    print("sync ops in the forward:", {k: big.get(k, 0) for k in SYNC_OPS})
    sizes = {b: sum(n.values()) for b, n in counts.items()}
    verdict = (
        "no per-sample Python loop" if len(set(sizes.values())) == 1 else "op count grows with B"
    )
    print(f"ops per forward by batch size: {sizes} -> {verdict}")


if __name__ == "__main__":
    main()
