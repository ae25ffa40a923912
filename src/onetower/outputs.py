"""Output dataclasses shared by the encoder, the heads and the training loop.

Heads read tokens through :class:`EncoderOutput`'s segment map (``modality_slices`` and
``cls_positions``), never by offset arithmetic of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: Segment id of each stream in the joint sequence (rows of the segment embedding table); the
#: i-th image of a row with several (from 0) has IMAGE_SEGMENT + i.
TEXT_SEGMENT, IMAGE_SEGMENT = 0, 1


def image_stream_name(i: int) -> str:
    """Name of the ``i``-th image stream (from 0) of a row with several images:
    ``"image"``, ``"image2"``, ``"image3"``, ...; its patches are ``f"{name}_patches"``."""
    return "image" if i == 0 else f"image{i + 1}"


@dataclass
class EncoderOutput:
    """What one pass of the shared encoder returns.

    The joint sequence is laid out as ``[text ; image]`` where either stream may be absent,
    or ``[text ; image ; image2 ; ...]`` when each row has several images (UNITER's triplet).

    Attributes:
        last_hidden_state: final-normed token states `(B, L, D)`.
        pooler_output: pooled `(B, D)` (dense + tanh on the first CLS token, ViLT style).
        attention_mask: bool `(B, L)`, True = real token; None when nothing is padded.
        segment_ids: long `(B, L)` segment (modality-type) id of every token.
        modality_slices: where each stream lies along L: keys ``"text"``, ``"image"`` (image
            CLS included) and ``"image_patches"`` (patch tokens only); with several images per
            row also ``"image2"``, ``"image2_patches"``, ... (see :func:`image_stream_name`).
        cls_positions: index along L of each stream's CLS token (``"text"``, ``"image"``, ...);
            absent when that stream has none.
        image_keep_ids: long `(B, Nk)` indices (into the full patch grid) of the patches that
            were encoded, -1 for padding; None when every patch was encoded in grid order.
        text_keep_ids: long `(B, Tk)` positions of the encoded text tokens (-1 = padding) when
            masked text tokens were dropped (M3AE); None when every token was encoded.
        image_grid: ``(h, w)`` patch grid of the input image, or None without an image.
        unimodal_states: per-modality tower outputs `(B, L_m, D)` before fusion (FLAVA style),
            keyed ``"text"`` / ``"image"``; empty when the model has no towers.
        hidden_states: input of every fusion block plus the pre-norm output, when requested.
    """

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor
    attention_mask: torch.Tensor | None
    segment_ids: torch.Tensor
    modality_slices: dict[str, slice]
    cls_positions: dict[str, int]
    image_keep_ids: torch.Tensor | None = None
    text_keep_ids: torch.Tensor | None = None
    image_grid: tuple[int, int] | None = None
    unimodal_states: dict[str, torch.Tensor] = field(default_factory=dict)
    hidden_states: tuple[torch.Tensor, ...] | None = None

    def tokens(self, name: str) -> torch.Tensor:
        """States of one stream, `(B, L_name, D)`; ``name`` is a key of ``modality_slices``."""
        if name not in self.modality_slices:
            raise KeyError(
                f"this encoder output has no {name!r} tokens (has {sorted(self.modality_slices)})"
            )
        return self.last_hidden_state[:, self.modality_slices[name]]

    def token_mask(self, name: str) -> torch.Tensor | None:
        """Bool `(B, L_name)` real-token mask of one stream, or None when it has no padding."""
        if self.attention_mask is None:
            return None
        return self.attention_mask[:, self.modality_slices[name]]

    def cls(self, name: str) -> torch.Tensor:
        """CLS state of one stream, `(B, D)`."""
        if name not in self.cls_positions:
            raise KeyError(f"this encoder output has no {name!r} CLS token")
        return self.last_hidden_state[:, self.cls_positions[name]]

    @property
    def has_text(self) -> bool:
        return "text" in self.modality_slices

    @property
    def has_image(self) -> bool:
        return "image" in self.modality_slices
