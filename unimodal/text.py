"""BERT-style text embedder: token + position embeddings, optional LayerNorm, dropout."""

from __future__ import annotations

import torch
from torch import nn

from onetower.unimodal.positions import sincos_1d


class TextEmbedder(nn.Module):
    """Embed token ids into `(B, T, D)`.

    Args:
        vocab_size: token vocabulary size V.
        dim: width D.
        max_len: number of positions (the longest text it accepts).
        position: ``"learned"`` (BERT / ViLT) or ``"sincos"`` (fixed, M3AE).
        norm: apply LayerNorm after the sum (BERT / ViLT do; BEiT-3 does not).
        norm_eps: LayerNorm epsilon.
        dropout: dropout on the output.
        pad_token_id: id whose embedding row is kept at zero at init (``padding_idx``).
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        max_len: int,
        position: str = "learned",
        norm: bool = True,
        norm_eps: float = 1e-12,
        dropout: float = 0.0,
        pad_token_id: int | None = None,
    ) -> None:
        super().__init__()
        self.vocab_size, self.max_len = vocab_size, max_len
        self.word_embeddings = nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        if position == "learned":
            self.position_embeddings = nn.Parameter(torch.zeros(max_len, dim))
        elif position == "sincos":
            # Derived, so neither a parameter nor a buffer: a non-persistent buffer would come
            # back uninitialised from transformers' meta-device from_pretrained.
            self.position_embeddings = None
        else:
            raise ValueError(f"text position must be 'learned' or 'sincos', got {position!r}")
        self.dim = dim
        self._sincos: torch.Tensor | None = None  # built on first use, on the input's device
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def positions(self, length: int, like: torch.Tensor) -> torch.Tensor:
        """The first ``length`` rows of the position table `(length, D)`, on ``like``'s device."""
        if self.position_embeddings is not None:
            return self.position_embeddings[:length]
        table = self._sincos
        if table is None or table.device != like.device or table.dtype != like.dtype:
            table = self._sincos = sincos_1d(self.max_len, self.dim).to(like)
        return table[:length]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Args:
            input_ids: long `(B, T)`, T <= ``max_len``.

        Returns:
            `(B, T, D)`.
        """
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}"
            )
        T = input_ids.shape[1]
        if T > self.max_len:
            raise ValueError(
                f"text of {T} tokens is longer than the position table ({self.max_len}, "
                "config max_text_len): truncate it in the tokenizer"
            )
        x = self.word_embeddings(input_ids)
        x = x + self.positions(T, x)
        return self.dropout(self.norm(x))
