"""Predictors that turn encoded image patches into one feature per patch of the full grid.

:class:`MAEDecoder` is the light MAE / M3AE decoder: project to the decoder width, re-insert a
learned mask token at every patch the encoder never saw, add fixed 2-D sin-cos positions and
run a few blocks. :class:`MaskTokenPredictor` is the BEiT / FLAVA head for encoders that
already saw a mask token at every masked patch (dense, GELU, LayerNorm on each patch).
"""

from __future__ import annotations

import torch
from torch import nn

from onetower.layers import BlockStack
from onetower.objectives.base import PredictionTransform
from onetower.unimodal import sincos_2d


def reinsert_mask_tokens(
    visible: torch.Tensor, keep_ids: torch.Tensor, num_patches: int, mask_token: torch.Tensor
) -> torch.Tensor:
    """Scatter visible-patch states back onto the full grid, mask token elsewhere.

    Args:
        visible: `(B, Nk, D)` states of the kept patches, in ``keep_ids`` order.
        keep_ids: long `(B, Nk)` grid index of each kept patch, -1 = padding slot.
        num_patches: N, the full grid size.
        mask_token: `(1, 1, D)`.

    Returns:
        `(B, N, D)`.
    """
    B, _, D = visible.shape
    # Padding slots are sent to an extra trash row N that is cut off afterwards.
    index = torch.where(keep_ids >= 0, keep_ids, num_patches)  # (B, Nk)
    base = mask_token.to(visible.dtype).expand(B, num_patches + 1, D)  # (B, N + 1, D)
    full = base.scatter(1, index.unsqueeze(-1).expand(-1, -1, D), visible)  # (B, N + 1, D)
    return full[:, :num_patches]


class MAEDecoder(nn.Module):
    """MAE-style decoder over the full patch grid.

    Args:
        dim: encoder width D.
        decoder_dim: decoder width Dd.
        depth: decoder blocks (MAE: 8, M3AE: 8; 1-2 is enough for a light decoder).
        num_heads: decoder attention heads.
        mlp_ratio: feed-forward width / Dd.
        norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        dim: int,
        decoder_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = BlockStack(
            depth, decoder_dim, num_heads, int(decoder_dim * mlp_ratio), norm_eps=norm_eps
        )
        self.out_dim = decoder_dim

    def forward(
        self, patches: torch.Tensor, keep_ids: torch.Tensor | None, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Args:
            patches: encoded patch states `(B, Nk, D)` (Nk = N when nothing was dropped).
            keep_ids: long `(B, Nk)` grid indices of the encoded patches, or None when the
                encoder saw every patch in grid order.
            grid: patch grid ``(h, w)``.

        Returns:
            decoder features `(B, N, Dd)` in grid order.
        """
        x = self.embed(patches)  # (B, Nk, Dd)
        N = grid[0] * grid[1]
        if keep_ids is not None:
            x = reinsert_mask_tokens(x, keep_ids, N, self.mask_token)  # (B, N, Dd)
        x = x + sincos_2d(grid, x.shape[-1]).to(x)[None]
        x, _ = self.blocks(x)
        return x


class MaskTokenPredictor(nn.Module):
    """BEiT / FLAVA prediction transform on each patch; needs every patch to be encoded.

    Args:
        dim: encoder width D.
        eps: LayerNorm epsilon.
    """

    def __init__(self, dim: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.transform = PredictionTransform(dim, eps)
        self.out_dim = dim

    def forward(
        self, patches: torch.Tensor, keep_ids: torch.Tensor | None, grid: tuple[int, int]
    ) -> torch.Tensor:
        """`(B, N, D)` patch states -> `(B, N, D)` features; see :meth:`MAEDecoder.forward`."""
        if keep_ids is not None:
            raise ValueError(
                "masked patches were dropped from the encoder (image_keep_ids); the mask-token "
                "predictor cannot re-insert them: use decoder_depth >= 1 or masking='mask_token'"
            )
        return self.transform(patches)
