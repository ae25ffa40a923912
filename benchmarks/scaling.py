"""Step time of ``vilt_like`` against batch size and image resolution.

At these sequence lengths (tens of tokens) the feed-forward and projection matmuls dominate
and attention (quadratic in length) is a small share, so the step cost should grow about
linearly in the number of tokens the encoder processes. The script prints the step time,
tokens per step (every encoder pass, counted with a hook) and ms per 1k tokens; a flat last
column means linear cost. Sizes are timed in alternating rounds after warm-up.

    .venv/bin/python benchmarks/scaling.py [--batches 4,8,16,32] [--resolutions 32,64,96]
        [--batch-for-resolution 16] [--warmup 1] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json

import torch
from _common import (
    Contender,
    environment,
    json_path,
    pick_device,
    recipe_step,
    size_overrides,
    time_alternating,
    tokenizer,
    write_json,
)

from onetower.layers import BlockStack


def tokens_per_step(c: Contender) -> int:
    """Tokens entering the shared encoder over one step (sum of B x L over its passes)."""
    seen: list[int] = []
    encoder = c.module.model.encoder
    assert isinstance(encoder, BlockStack)
    hook = encoder.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].shape[0] * a[0].shape[1])
    )
    try:
        c.step()
    finally:
        hook.remove()
    return sum(seen)


def sweep(label: str, rows: list[tuple[str, Contender]], device, a) -> list[dict]:
    """Time one sweep (alternating) and print its table."""
    contenders = [c for _, c in rows]
    time_alternating(contenders, device, a.warmup, a.rounds)
    print(f"\n== {label}: best of {a.rounds} alternating rounds after {a.warmup} warm-up")
    print(
        f"{'setting':>14s} {'ms/step':>8s} {'tokens':>7s} {'ms/1k tokens':>12s} {'samples/s':>9s}"
    )
    out = []
    for setting, c in rows:
        n = tokens_per_step(c)
        ms = 1e3 * c.seconds
        print(f"{setting:>14s} {ms:8.0f} {n:7d} {1e3 * ms / n:12.2f} {c.samples_per_s:9.1f}")
        out.append(
            {
                "setting": setting,
                "ms_per_step": ms,
                "tokens_per_step": n,
                "ms_per_1k_tokens": 1e3 * ms / n,
                "samples_per_s": c.samples_per_s,
                "times_s": c.times,
            }
        )
    print(linear_fit([r["tokens_per_step"] for r in out], [r["ms_per_step"] for r in out]))
    return out


def linear_fit(tokens: list[int], ms: list[float]) -> str:
    """Least-squares ``ms = a + b * tokens`` and its worst relative residual: a straight line
    (a fixed per-step cost plus a constant cost per token) is what linear growth means."""
    x, y = torch.tensor(tokens, dtype=torch.float64), torch.tensor(ms, dtype=torch.float64)
    A = torch.stack([torch.ones_like(x), x], dim=1)  # (n, 2)
    a, b = torch.linalg.lstsq(A, y[:, None]).solution[:, 0].tolist()
    worst = ((a + b * x - y).abs() / y).max().item()
    return f"  fit: ms/step = {a:.0f} + {1e3 * b:.1f} x (tokens / 1k); worst residual {worst:.1%}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="4,8,16,32")
    p.add_argument(
        "--resolutions", default="32,64,96", help="pixels (patch 8: 16, 64, 144 patches)"
    )
    p.add_argument("--batch-for-resolution", type=int, default=16)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--text-len", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--quick", action="store_true", help="smoke: width 64, small sizes")
    p.add_argument("--json", default=json_path("scaling"), help="where to write the record")
    a = p.parse_args()
    if a.quick:
        a.width, a.heads, a.batches, a.resolutions, a.batch_for_resolution = (
            64,
            2,
            "2,4",
            "16,32",
            2,
        )
        a.rounds = 2
    device = pick_device(a.device)
    tok = tokenizer()
    env = environment(device)
    print(json.dumps(env))

    def make(batch: int, pixels: int) -> Contender:
        size = size_overrides(a.width, a.depth, a.heads, (pixels // 8) ** 2, a.text_len)
        return recipe_step("vilt_like", size, batch, device, tok)

    batches = [int(b) for b in a.batches.split(",")]
    by_batch = sweep(
        "batch size (64 px, 64 patches)", [(f"B={b}", make(b, 64)) for b in batches], device, a
    )
    res = [int(r) for r in a.resolutions.split(",")]
    B = a.batch_for_resolution
    by_res = sweep(
        f"resolution (B={B}, patch 8)",
        [(f"{r}px/{(r // 8) ** 2}p", make(B, r)) for r in res],
        device,
        a,
    )
    write_json(
        a.json, {"environment": env, "args": vars(a), "batch": by_batch, "resolution": by_res}
    )


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
