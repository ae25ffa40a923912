"""Optional unimodal towers (FLAVA style): N transformer layers on one modality before fusion."""

from __future__ import annotations

import torch
from torch import nn

from onetower.layers import BlockStack


class UnimodalTower(nn.Module):
    """``depth`` pre-LN blocks on one stream, its own final norm, then a projection to fusion.

    The tower output (after the norm, before the projection) is what FLAVA uses for its
    unimodal objectives and contrastive features; the projection feeds the fusion encoder
    (FLAVA's ``text_to_mm_projection`` / ``image_to_mm_projection``).

    Args:
        depth: number of blocks (> 0).
        dim, num_heads, mlp_hidden, qkv_bias, drop, attn_drop, drop_path, norm_eps: as
            :class:`~onetower.layers.Block`.
        post_norm: BERT-order blocks and no final norm (a text tower from BERT / RoBERTa).
        fusion_prenorm: project the last block's output before the final norm (FLAVA's
            ``*_to_mm_projection`` reads the encoder's last hidden state, not the normed one).
    """

    def __init__(
        self,
        depth: int,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        post_norm: bool = False,
        fusion_prenorm: bool = False,
    ) -> None:
        super().__init__()
        self.fusion_prenorm = fusion_prenorm
        if depth <= 0:
            raise ValueError(f"a unimodal tower needs at least one layer, got {depth}")
        self.encoder = BlockStack(
            depth,
            dim,
            num_heads,
            mlp_hidden,
            qkv_bias,
            drop,
            attn_drop,
            drop_path,
            norm_eps,
            post_norm=post_norm,
        )
        self.to_fusion = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, project: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Args:
            x: embedded tokens `(B, L, D)`.
            valid: bool `(B, L)` real-token mask, or None without padding.
            project: also project into the fusion space; False for passes that stop after
                the tower or project later (``OneTowerModel.fuse_unimodal``).

        Returns:
            ``(tower states (B, L, D), projected into the fusion space (B, L, D) or None)``.
        """
        attn_mask = None if valid is None else valid[:, None, None, :]  # (B, 1, 1, L)
        states, blocks = self.encoder(x, attn_mask, return_all=self.fusion_prenorm and project)
        if not project:
            return states, None
        return states, self.to_fusion(blocks[-1] if self.fusion_prenorm else states)
