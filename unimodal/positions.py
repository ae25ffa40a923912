"""Fixed sin-cos position tables (1-D for text, 2-D for image grids), as in MAE / M3AE."""

from __future__ import annotations

import torch


def sincos_1d(length: int, dim: int) -> torch.Tensor:
    """Transformer sin-cos table `(length, dim)`; dim must be even."""
    if dim % 2:
        raise ValueError(f"sin-cos positions need an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * omega[None]  # (length, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """MAE 2-D sin-cos table `(h * w, dim)`: half the width encodes rows, half columns."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {dim}")
    h, w = grid
    rows = sincos_1d(h, dim // 2)  # (h, dim/2)
    cols = sincos_1d(w, dim // 2)  # (w, dim/2)
    # (h, w, dim) -> (h * w, dim), row-major like the patch order of PatchEmbed
    table = torch.cat(
        [rows[:, None].expand(h, w, dim // 2), cols[None].expand(h, w, dim // 2)], dim=-1
    )
    return table.reshape(h * w, dim)
