"""A differentiable all-gather for contrastive features (open_clip ``gather_with_grad``).

``accelerator.gather`` and ``dist.all_gather`` carry no gradient. The backward here sums the
incoming gradients of every rank (all-reduce) and keeps this rank's slice, so each rank's
features receive the gradient of *every* rank's loss, as with
``torch.distributed.nn.functional.all_gather`` (deprecated in torch 2.13+, hence our own).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)  # (world * B, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)  # sum of every rank's d(loss_r)/d(gathered)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather `(B, ...)` into `(world * B, ...)` along dim 0, differentiably.

    Every rank must pass the same B. Identity without a process group.
    """
    _, size = world()
    if size == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient (for metrics / negative sampling); identity when single."""
    _, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
