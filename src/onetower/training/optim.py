"""Optimiser and schedule: AdamW without weight decay on norms, biases and embedding tokens,
linear warmup then cosine decay (transformers' scheduler)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import get_cosine_with_min_lr_schedule_with_warmup

# 1-D tensors (norm weights, biases) and these learned tokens / tables are not decayed, as in
# timm / MAE / BEiT (``no_weight_decay``): decay would pull positions and special tokens to 0.
NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed", "position_embeddings", "logit_scale")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    lr: float | None = None,
    head_prefixes: tuple[str, ...] = (),
    head_lr_mult: float = 1.0,
) -> list[dict]:
    """Split trainable parameters into decayed / non-decayed groups; with ``head_prefixes``,
    the parameters whose names start with one get ``lr * head_lr_mult`` (ViLT fine-tunes its
    new task head at 10x the encoder's lr)."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or any(n in name for n in NO_DECAY_NAMES) or "norm" in name.lower()
        groups.setdefault((name.startswith(head_prefixes), no_decay), []).append(p)
    out = []
    for (head, no_decay), params in sorted(groups.items()):
        group = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay}
        if head and lr is not None:
            group["lr"] = lr * head_lr_mult
        out.append(group)
    return out


def adamw(
    groups: list[dict],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-8,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over parameter groups; ``fused``: the fused kernel (CUDA only)."""
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-8,
    fused: bool | None = None,
    head_prefixes: tuple[str, ...] = (),
    head_lr_mult: float = 1.0,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` of ``model``; ``fused=None``: fused when every
    parameter is on CUDA."""
    if fused is None:
        fused = all(p.is_cuda for p in model.parameters())
    groups = param_groups(model, weight_decay, lr, head_prefixes, head_lr_mult)
    return adamw(groups, lr, betas, eps, fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the peak lr, then cosine decay to ``min_lr_ratio`` x peak at
    ``max_steps`` (counted in optimizer steps)."""
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, warmup_steps, max_steps, min_lr_rate=min_lr_ratio
    )
