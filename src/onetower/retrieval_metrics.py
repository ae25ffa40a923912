"""Retrieval metrics on score matrices (used by pretraining's held-out evaluation and by
zero-shot evaluation)."""

from __future__ import annotations

import torch


def recall_at_k(
    i2t: torch.Tensor,
    t2i: torch.Tensor,
    captions: list[str],
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, float]:
    """R@K both ways, for N pairs where pair i is image i and caption i.

    Args:
        i2t: `(N images, N texts)` scores; t2i: `(N texts, N images)` scores (the transpose
            for a symmetric similarity; differs after re-ranking).
        captions: the N captions. A hit is a retrieved caption identical to the true one, so
            duplicate captions (common in synthetic data) are not misses.
        ks: the cut-offs.

    Returns:
        Percentages ``i2t_r1`` ... ``t2i_r10``.
    """
    n = len(captions)
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cap = torch.tensor([ids[c] for c in captions], device=i2t.device)  # (N,) caption class
    out = {}
    for name, scores in (("i2t", i2t), ("t2i", t2i)):
        order = scores.argsort(dim=1, descending=True)  # (N, N)
        hit = cap[order] == cap[:, None]  # (N, N) retrieved caption equals the true one
        first = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(cap, n))
        for k in ks:
            out[f"{name}_r{k}"] = 100.0 * float((first < k).float().mean())
    return out
