"""Pluggable masked-image-modeling targets: raw / normalised pixels, or discrete visual tokens.

A target turns the clean image into one target per patch (grid order, as ``patchify``) and
scores predictions at the masked patches. :class:`PixelTarget` is MAE / M3AE regression;
:class:`TokenTarget` wraps any discrete visual tokenizer (DALL-E dVAE for FLAVA / BEiT v1,
VQ-KD for BEiT v2/3, a VQGAN, or a toy codebook in tests) for cross-entropy over its codebook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from onetower.objectives.base import accuracy, cross_entropy_mean
from onetower.unimodal import patchify


@runtime_checkable
class MIMTarget(Protocol):
    """Interface of a MIM target."""

    #: Width of the prediction per patch (pixels per patch, or the codebook size).
    out_dim: int

    def targets(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Per-patch targets `(B, N, ...)` of clean images `(B, C, H, W)`, without gradient."""
        ...

    def loss(
        self, pred: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of `(M, out_dim)` predictions at the M masked patches, and detached metrics.

        Must return a finite zero still connected to ``pred`` when M = 0.
        """
        ...


class PixelTarget(nn.Module):
    """Pixel regression: per-patch MSE averaged over masked patches (MAE ``forward_loss``).

    Args:
        patch_size: P (injected from the encoder config).
        num_channels: C.
        norm_pix_loss: normalise each target patch by its own mean and (unbiased) variance,
            as MAE's ``norm_pix_loss``; M3AE regresses the raw (dataset-normalised) pixels.
        eps: added to the variance before the square root (MAE: 1e-6).
    """

    def __init__(
        self, patch_size: int, num_channels: int = 3, norm_pix_loss: bool = False, eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.patch_size, self.norm_pix_loss, self.eps = patch_size, norm_pix_loss, eps
        self.out_dim = patch_size * patch_size * num_channels

    @torch.no_grad()
    def targets(self, pixel_values: torch.Tensor) -> torch.Tensor:
        target = patchify(pixel_values.float(), self.patch_size)  # (B, N, P*P*C)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + self.eps) ** 0.5
        return target

    @torch.no_grad()
    def to_pixels(self, pred: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Predictions `(B, N, P*P*C)` in the space of ``patchify(pixel_values)``: with
        ``norm_pix_loss`` the truth's per-patch mean and variance are put back (as MAE shows
        its reconstructions)."""
        pred = pred.float()
        if not self.norm_pix_loss:
            return pred
        truth = patchify(pixel_values.float(), self.patch_size)  # (B, N, P*P*C)
        mu, var = truth.mean(-1, keepdim=True), truth.var(-1, keepdim=True)
        return pred * (var + self.eps) ** 0.5 + mu

    def loss(
        self, pred: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # (M,)
        return per_patch.sum() / max(per_patch.numel(), 1), {}


class TokenTarget(nn.Module):
    """Cross-entropy over the codebook of a frozen discrete visual tokenizer.

    Args:
        tokenizer: callable mapping images `(B, C, H, W)` to codebook ids `(B, N)` on the
            encoder's patch grid (e.g. ``FlavaImageCodebook.get_codebook_indices``). Kept
            frozen and run without gradient; registered as a submodule when it is a module, so
            it follows ``.to(device)``.
        vocab_size: codebook size K.
    """

    def __init__(self, tokenizer: Callable[[torch.Tensor], torch.Tensor], vocab_size: int) -> None:
        super().__init__()
        if isinstance(tokenizer, nn.Module):
            tokenizer.requires_grad_(False)
        self.tokenizer = tokenizer
        self.out_dim = vocab_size

    @torch.no_grad()
    def targets(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if isinstance(self.tokenizer, nn.Module):
            self.tokenizer.eval()  # a frozen tokenizer never sees train-mode dropout / BN updates
        ids = self.tokenizer(pixel_values).long()
        return ids.flatten(1)  # (B, h, w) or (B, N) -> (B, N)

    def loss(
        self, pred: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return cross_entropy_mean(pred, target), {"acc": accuracy(pred, target)}
