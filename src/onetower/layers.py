"""Transformer layers shared by the unimodal towers and the fusion encoder.

Everything here is modality-agnostic except :class:`Block`'s optional *Multiway* mode, where
each modality (text, image) has its own LayerNorms and feed-forward network while attention is
shared over the joint sequence (VLMo style); with ``multiway_attention`` the q/k/v and output
projections are per-modality too and only the softmax over the joint sequence is shared (the
released BEiT-3 checkpoints, torchscale's ``MultiwayNetwork``). The sequence layout is always
``[text ; image]``, so routing tokens to their expert is a slice at ``split`` (the number of
text tokens), never a gather.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, Mlp
from torch import nn

#: Index of each modality's expert in a Multiway block.
TEXT_EXPERT, IMAGE_EXPERT = 0, 1


def route(module: nn.Module, x: torch.Tensor, split: int) -> torch.Tensor:
    """Apply a shared module, or (for a Multiway ``ModuleList``) each expert to its modality.

    Args:
        module: a module, or a ``ModuleList`` indexed by TEXT_EXPERT / IMAGE_EXPERT.
        x: `(B, L, D)` laid out as ``[text ; image]``.
        split: number of leading text tokens.

    Returns:
        `(B, L, D')`.
    """
    if not isinstance(module, nn.ModuleList):
        return module(x)
    if split >= x.shape[1]:
        return module[TEXT_EXPERT](x)
    if split <= 0:
        return module[IMAGE_EXPERT](x)
    text = module[TEXT_EXPERT](x[:, :split])
    image = module[IMAGE_EXPERT](x[:, split:])
    return torch.cat([text, image], dim=1)


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    Args:
        dim: model width D.
        num_heads: number of heads H (D must be divisible by H).
        qkv_bias: add a bias to the fused q/k/v projection.
        attn_drop: dropout on the attention probabilities (training only).
        proj_drop: dropout after the output projection.
        num_experts: 1, or 2 for per-modality q/k/v and output projections (``qkv``, ``proj``
            and ``norm`` are then ``ModuleList`` s indexed by TEXT_EXPERT / IMAGE_EXPERT; the
            softmax attention still runs over the whole joint sequence).
        subln: Sub-LN (Magneto / BEiT-3): a LayerNorm on the attention output before the
            output projection.
        norm_eps: epsilon of that LayerNorm.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        num_experts: int = 1,
        subln: bool = False,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"hidden size {dim} is not divisible by num_attention_heads {num_heads}"
            )
        if num_experts not in (1, 2):
            raise ValueError(f"num_experts must be 1 or 2, got {num_experts}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads

        def experts(make: Callable[[], nn.Module]) -> nn.Module:
            return make() if num_experts == 1 else nn.ModuleList(make() for _ in range(num_experts))

        self.qkv = experts(lambda: nn.Linear(dim, 3 * dim, bias=qkv_bias))
        self.attn_drop = attn_drop
        self.norm = experts(lambda: nn.LayerNorm(dim, eps=norm_eps)) if subln else None
        self.proj = experts(lambda: nn.Linear(dim, dim))
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, split: int = 0
    ) -> torch.Tensor:
        """Attend over the whole sequence.

        Args:
            x: tokens `(B, L, D)` laid out as ``[text ; image]``.
            attn_mask: bool `(B, 1, 1, L)` key mask, True = may be attended; None = no padding
                (SDPA then takes its mask-free fast path).
            split: number of leading text tokens (per-modality projections only).

        Returns:
            `(B, L, D)`.
        """
        B, L, D = x.shape
        # (B, L, 3D) -> (3, B, H, L, Dh)
        qkv = route(self.qkv, x, split)
        qkv = qkv.view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(B, L, D)  # (B, H, L, Dh) -> (B, L, D)
        if self.norm is not None:
            out = route(self.norm, out, split)
        return self.proj_drop(route(self.proj, out, split))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

    With ``num_experts=2`` the block is *Multiway*: ``norm1``, ``norm2`` and ``mlp`` are
    :class:`torch.nn.ModuleList` s indexed by :data:`TEXT_EXPERT` / :data:`IMAGE_EXPERT`, and
    tokens before ``split`` use the text expert, the rest the image expert.

    Args:
        dim: width D.
        num_heads: attention heads.
        mlp_hidden: hidden width of the feed-forward network.
        qkv_bias: bias on the q/k/v projection.
        drop: dropout after attention/MLP projections.
        attn_drop: attention-probability dropout.
        drop_path: stochastic-depth rate of this block.
        norm_eps: LayerNorm epsilon.
        num_experts: 1 (shared weights) or 2 (Multiway text/image experts).
        post_norm: BERT's post-LN order, ``norm1(x + attn(x))`` then ``norm2(x + mlp(x))``
            (text towers initialised from BERT / RoBERTa / XLM-R).
        multiway_attention: per-modality attention projections too (needs ``num_experts=2``;
            BEiT-3's released checkpoints).
        subln: Sub-LN (Magneto / BEiT-3): a LayerNorm before the attention's output projection
            and one before the MLP's ``fc2`` (timm ``Mlp``'s ``norm``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        num_experts: int = 1,
        post_norm: bool = False,
        multiway_attention: bool = False,
        subln: bool = False,
    ) -> None:
        super().__init__()
        if post_norm and (num_experts != 1 or subln):
            raise ValueError("post-norm blocks (BERT) have no Multiway or Sub-LN mode")
        if multiway_attention and num_experts != 2:
            raise ValueError("multiway_attention needs num_experts=2 (Multiway blocks)")
        self.post_norm = post_norm
        if num_experts not in (1, 2):
            raise ValueError(f"num_experts must be 1 or 2, got {num_experts}")
        self.num_experts = num_experts

        def norm() -> nn.Module:
            return nn.LayerNorm(dim, eps=norm_eps)

        def mlp() -> nn.Module:
            return Mlp(
                dim,
                hidden_features=mlp_hidden,
                act_layer=nn.GELU,
                norm_layer=partial(nn.LayerNorm, eps=norm_eps) if subln else None,
                drop=drop,
            )

        if num_experts == 1:
            self.norm1, self.norm2, self.mlp = norm(), norm(), mlp()
        else:
            self.norm1 = nn.ModuleList([norm() for _ in range(num_experts)])
            self.norm2 = nn.ModuleList([norm() for _ in range(num_experts)])
            self.mlp = nn.ModuleList([mlp() for _ in range(num_experts)])
        self.attn = Attention(
            dim,
            num_heads,
            qkv_bias,
            attn_drop,
            drop,
            num_experts=num_experts if multiway_attention else 1,
            subln=subln,
            norm_eps=norm_eps,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, split: int = 0
    ) -> torch.Tensor:
        """Args:
            x: `(B, L, D)` laid out as ``[text ; image]``.
            attn_mask: bool `(B, 1, 1, L)` key mask or None.
            split: number of leading text tokens (Multiway routing; ignored otherwise).

        Returns:
            `(B, L, D)`.
        """
        if self.post_norm:
            x = self.norm1(x + self.drop_path(self.attn(x, attn_mask)))
            return self.norm2(x + self.drop_path(self.mlp(x)))
        x = x + self.drop_path(self.attn(route(self.norm1, x, split), attn_mask, split))
        x = x + self.drop_path(route(self.mlp, route(self.norm2, x, split), split))
        return x


class BlockStack(nn.Module):
    """N :class:`Block` s with a linearly increasing stochastic-depth rate, plus a final norm.

    Used both as a unimodal tower and as the fusion encoder. ``post_norm`` stacks BERT-order
    blocks and no final norm; ``multiway_attention`` / ``subln`` are :class:`Block`'s.
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
        num_experts: int = 1,
        post_norm: bool = False,
        multiway_attention: bool = False,
        subln: bool = False,
    ) -> None:
        super().__init__()
        rates = torch.linspace(0, drop_path, depth).tolist() if depth else []
        self.blocks = nn.ModuleList(
            Block(
                dim,
                num_heads,
                mlp_hidden,
                qkv_bias,
                drop,
                attn_drop,
                r,
                norm_eps,
                num_experts,
                post_norm,
                multiway_attention,
                subln,
            )
            for r in rates
        )
        if post_norm:  # each block ends with a norm (BERT): no final one
            self.norm = nn.Identity()
        elif num_experts == 1:
            self.norm = nn.LayerNorm(dim, eps=norm_eps)
        else:
            self.norm = nn.ModuleList(nn.LayerNorm(dim, eps=norm_eps) for _ in range(num_experts))
        self.gradient_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        split: int = 0,
        return_all: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Run every block then the final norm.

        Args:
            x: `(B, L, D)`.
            attn_mask: bool `(B, 1, 1, L)` key mask or None.
            split: number of leading text tokens (Multiway routing).
            return_all: also return the input of every block and the pre-norm output.

        Returns:
            ``(normed (B, L, D), all_hidden_states or None)``.
        """
        states: list[torch.Tensor] | None = [] if return_all else None
        for block in self.blocks:
            if states is not None:
                states.append(x)
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(
                    block, x, attn_mask, split, use_reentrant=False
                )
            else:
                x = block(x, attn_mask, split)
        if states is not None:
            states.append(x)
        return route(self.norm, x, split), (tuple(states) if states is not None else None)


class Pooler(nn.Module):
    """Dense + tanh on one token (ViLT / BERT pooler)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        """`(B, D)` -> `(B, D)`."""
        return torch.tanh(self.dense(token))
