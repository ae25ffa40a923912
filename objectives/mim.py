"""Masked image modeling on the ``masked_pair`` view, with a pluggable target.

Two ways for the encoder to see a masked image (``masking``):
- ``"drop"`` (MAE / M3AE / FLIP): masked patches are removed before the encoder
  (``image_keep_ids``); an :class:`~onetower.objectives.mim_decoder.MAEDecoder` re-inserts
  mask tokens;
- ``"mask_token"`` (BEiT / FLAVA): masked patches are replaced by the encoder's learned mask
  token (``bool_masked_pos``) and predicted in place.
Targets are pixels (:class:`PixelTarget`) or a discrete tokenizer's ids (:class:`TokenTarget`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from onetower.data import PatchMasking, keys
from onetower.objectives.base import ObjectiveOutput
from onetower.objectives.mim_decoder import MAEDecoder, MaskTokenPredictor
from onetower.objectives.mim_targets import MIMTarget, PixelTarget, TokenTarget
from onetower.objectives.registry import register_objective
from onetower.objectives.views import MASKED_PAIR, MaskedPairView

MASKING_STYLES = ("drop", "mask_token")


def masked_patches(
    batch: Mapping[str, Any], keep_ids: torch.Tensor | None, num_patches: int
) -> torch.Tensor:
    """Bool `(B, N)` of the patches to predict: ``MIM_MASK`` minus anything the encoder saw.

    Without ``MIM_MASK`` the complement of ``keep_ids`` is used (visible-only batches).
    """
    masked = batch.get(keys.MIM_MASK)
    if keep_ids is None:
        if masked is None:
            raise KeyError(f"MIM needs {keys.MIM_MASK!r} or {keys.IMAGE_KEEP_IDS!r} in the batch")
        return masked.bool()
    seen = torch.zeros(keep_ids.shape[0], num_patches + 1, dtype=torch.bool, device=keep_ids.device)
    seen.scatter_(1, torch.where(keep_ids >= 0, keep_ids, num_patches), True)  # (B, N + 1)
    unseen = ~seen[:, :num_patches]
    # A patch the encoder saw is never a target, even if the collator also flagged it.
    return unseen if masked is None else masked.bool() & unseen


class MIMHead(nn.Module):
    """Predict the target of every masked patch.

    Args:
        predictor: :class:`MAEDecoder` or :class:`MaskTokenPredictor` (anything mapping
            ``(patches (B, Nk, D), keep_ids, grid)`` to features `(B, N, F)` with ``out_dim`` F).
        target: a :class:`MIMTarget`.
        masking: ``"drop"`` or ``"mask_token"``: how the ``masked_pair`` view hides the
            masked patches from the encoder.
        patches: how patches are selected (ratio, BEiT blocks).
    """

    modalities = frozenset({"image"})

    def __init__(
        self, predictor: nn.Module, target: MIMTarget, masking: str, patches: PatchMasking
    ) -> None:
        super().__init__()
        if masking not in MASKING_STYLES:
            raise ValueError(f"mim masking must be one of {MASKING_STYLES}, got {masking!r}")
        self.predictor, self.target = predictor, target
        self.output = nn.Linear(predictor.out_dim, target.out_dim)
        self.views = (MaskedPairView(image_mode=masking, image_masking=patches),)

    def applies_to(self, batch: Mapping[str, Any]) -> bool:
        has_mask = keys.MIM_MASK in batch or keys.IMAGE_KEEP_IDS in batch
        return keys.PIXEL_VALUES in batch and has_mask

    def after_optimizer_step(self) -> None:
        pass

    @torch.no_grad()
    def predict_pixels(
        self, views: Mapping[str, Any], batch: Mapping[str, Any]
    ) -> torch.Tensor | None:
        """Predicted pixels of every patch `(B, N, P*P*C)`, or None with a token target."""
        if not isinstance(self.target, PixelTarget):
            return None
        out = views[MASKED_PAIR]
        pred = self.output(
            self.predictor(out.tokens("image_patches"), out.image_keep_ids, out.image_grid)
        )  # (B, N, P*P*C)
        return self.target.to_pixels(pred, batch[keys.PIXEL_VALUES])

    def forward(self, views: Mapping[str, Any], batch: Mapping[str, Any]) -> ObjectiveOutput:
        """Args:
            views: ``{"masked_pair": EncoderOutput}`` with a masked image stream.
            batch: ``PIXEL_VALUES`` `(B, C, H, W)` (clean, for the targets) and ``MIM_MASK``
                bool `(B, N)` and/or ``IMAGE_KEEP_IDS``.

        Returns:
            the target's loss over masked patches and its metrics.
        """
        out = views[MASKED_PAIR]
        grid = out.image_grid
        keep = out.image_keep_ids
        feats = self.predictor(out.tokens("image_patches"), keep, grid)  # (B, N, F)
        masked = masked_patches(batch, keep, grid[0] * grid[1])  # (B, N)
        # Only masked patches go through the output layer (a codebook can be 8192 wide).
        pred = self.output(feats[masked])  # (M, out_dim)
        target = self.target.targets(batch[keys.PIXEL_VALUES])[masked]  # (M, ...)
        loss, metrics = self.target.loss(pred, target)
        return ObjectiveOutput(loss=loss, metrics=metrics)


def _load_tokenizer(spec: str | Callable[..., Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """An object, or ``"pkg.module:factory"`` called with no arguments."""
    if not isinstance(spec, str):
        return spec
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"tokenizer must look like 'package.module:factory', got {spec!r}")
    return getattr(importlib.import_module(module), name)()


@register_objective("mim")
def build_mim(
    model: nn.Module,
    built: Mapping[str, nn.Module],
    target: str | MIMTarget = "pixel",
    norm_pix_loss: bool = False,
    masking: str | None = None,
    decoder_depth: int = 1,
    decoder_dim: int | None = None,
    decoder_heads: int | None = None,
    tokenizer: str | Callable[..., Any] | None = None,
    vocab_size: int | None = None,
    mask_ratio: float | None = None,
    block: bool = False,
) -> MIMHead:
    """MIM head from recipe options.

    Args:
        target: ``"pixel"``, ``"tokens"`` (needs ``tokenizer`` and ``vocab_size``) or a
            :class:`MIMTarget` object.
        norm_pix_loss: per-patch normalised pixel targets (MAE); M3AE uses raw pixels.
        masking: ``"drop"`` / ``"mask_token"``; default ``"mask_token"`` when the encoder has
            a mask token, else ``"drop"``.
        decoder_depth: MAE decoder blocks; 0 = BEiT / FLAVA transform head (mask-token only).
        decoder_dim, decoder_heads: decoder width / heads (default: the encoder's).
        tokenizer: discrete visual tokenizer (object or ``"module:factory"``) for ``tokens``.
        vocab_size: its codebook size.
        mask_ratio: share of patches masked; default 0.4 with mask tokens (BEiT / FLAVA mask
            75 of 196), 0.75 when patches are dropped (MAE).
        block: BEiT's block-wise masking (rectangles) instead of random patches.
    """
    c = model.config
    if masking is None:
        masking = "mask_token" if c.use_mask_token else "drop"
    if mask_ratio is None:
        mask_ratio = 0.4 if masking == "mask_token" else 0.75
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mim mask_ratio must be in (0, 1), got {mask_ratio}")
    patches = PatchMasking(model.image.grid, mask_ratio, block=block)
    if masking == "mask_token" and not c.use_mask_token:
        raise ValueError("mim masking='mask_token' needs an encoder built with use_mask_token=True")
    if isinstance(target, str):
        if target == "pixel":
            target = PixelTarget(c.patch_size, c.num_channels, norm_pix_loss)
        elif target == "tokens":
            if tokenizer is None or vocab_size is None:
                raise ValueError("mim target='tokens' needs both 'tokenizer' and 'vocab_size'")
            target = TokenTarget(_load_tokenizer(tokenizer), vocab_size)
        else:
            raise ValueError(f"mim target must be 'pixel' or 'tokens', got {target!r}")
    if decoder_depth > 0:
        predictor: nn.Module = MAEDecoder(
            c.hidden_size,
            decoder_dim or c.hidden_size,
            decoder_depth,
            decoder_heads or c.num_attention_heads,
            norm_eps=c.layer_norm_eps,
        )
    elif masking == "drop":
        raise ValueError("mim masking='drop' needs decoder_depth >= 1 to re-insert mask tokens")
    else:
        predictor = MaskTokenPredictor(c.hidden_size)
    return MIMHead(predictor, target, masking, patches)
