"""Optimiser and schedule: AdamW without weight decay on norms, biases and embedding tokens,
linear warmup then cosine decay (transformers' scheduler)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import get_cosine_with_min_lr_schedule_with_warmup

# 1-D tensors (norm weights, biases) and these learned tokens / tables are not decayed, as in
# timm / MAE / BEiT (``no_weight_decay``): decay would pull positions and special tokens to 0.
NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed", "position_embeddings", "logit_scale")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or any(n in name for n in NO_DECAY_NAMES) or "norm" in name.lower():
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; ``fused=None`` uses the fused kernel on CUDA only."""
    if fused is None:
        fused = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(
        param_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps, fused=fused or None
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the peak lr, then cosine decay to ``min_lr_ratio`` x peak at
    ``max_steps`` (counted in optimizer steps)."""
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, warmup_steps, max_steps, min_lr_rate=min_lr_ratio
    )
