"""M3AE: one joint MAE decoder reconstructs the dropped text tokens and image patches.

The encoder saw only the visible text tokens (``TEXT_KEEP_IDS``) and the visible patches
(``IMAGE_KEEP_IDS``) of the ``masked_pair`` view. The decoder projects them to its width,
re-inserts a learned mask token at every dropped position of both streams, adds fixed sin-cos
positions and a per-modality type embedding, and runs a few blocks over the joint
``[text ; patches]`` sequence. Loss = ``image_weight`` x pixel MSE on dropped patches (raw
pixels, as M3AE) + ``text_weight`` x cross-entropy on dropped tokens (M3AE README: 1.0 / 0.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from onetower.data import PatchMasking, TextMasking, keys
from onetower.objectives.base import (
    IGNORE_INDEX,
    ObjectiveOutput,
    accuracy,
    cross_entropy_mean,
)
from onetower.objectives.mim import masked_patches
from onetower.objectives.mim_decoder import MAEDecoder, reinsert_mask_tokens
from onetower.objectives.mim_targets import PixelTarget
from onetower.objectives.registry import register_objective
from onetower.objectives.views import MASKED_PAIR, MaskedPairView
from onetower.unimodal import sincos_1d, sincos_2d


class M3AEHead(nn.Module):
    """Joint text + image masked autoencoding on the visible-only ``masked_pair`` view.

    Args:
        dim: encoder width D.
        vocab_size: text vocabulary V.
        target: :class:`PixelTarget` for the patches.
        decoder_dim, depth, num_heads: decoder width, blocks and heads.
        image_weight, text_weight: weights of the two reconstruction losses.
        norm_eps: LayerNorm epsilon.
        text_masking, patches: how tokens and patches are selected; the selected ones never
            reach the encoder.
    """

    modalities = frozenset({"text", "image"})

    def __init__(
        self,
        dim: int,
        vocab_size: int,
        target: PixelTarget,
        decoder_dim: int,
        depth: int,
        num_heads: int,
        image_weight: float = 1.0,
        text_weight: float = 0.5,
        norm_eps: float = 1e-6,
        text_masking: TextMasking | None = None,
        patches: PatchMasking | None = None,
    ) -> None:
        super().__init__()
        self.views = (
            MaskedPairView(
                text_mode="drop",
                text_masking=text_masking or TextMasking(0.75),
                image_mode="drop",
                image_masking=patches or PatchMasking((1, 1), 0.75),
            ),
        )
        # the MAE decoder's pieces (projection, mask token, blocks), run over both streams
        self.decoder = MAEDecoder(dim, decoder_dim, depth, num_heads, norm_eps=norm_eps)
        self.type_embed = nn.Parameter(torch.zeros(2, decoder_dim))  # text, image
        nn.init.normal_(self.type_embed, std=0.02)
        self.to_text = nn.Linear(decoder_dim, vocab_size)
        self.to_pixels = nn.Linear(decoder_dim, target.out_dim)
        self.target = target
        self.image_weight, self.text_weight = image_weight, text_weight

    def applies_to(self, batch: Mapping[str, Any]) -> bool:
        return all(k in batch for k in (keys.MLM_LABELS, keys.TEXT_KEEP_IDS, keys.IMAGE_KEEP_IDS))

    def decode(self, out: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder states of every text position `(B, T, Dd)` and every patch `(B, N, Dd)`."""
        T = batch[keys.INPUT_IDS].shape[1]
        h, w = out.image_grid
        dec = self.decoder
        text = reinsert_mask_tokens(
            dec.embed(out.tokens("text")), out.text_keep_ids, T, dec.mask_token
        )  # (B, T, Dd)
        image = reinsert_mask_tokens(
            dec.embed(out.tokens("image_patches")), out.image_keep_ids, h * w, dec.mask_token
        )  # (B, N, Dd)
        Dd = text.shape[-1]
        text = text + sincos_1d(T, Dd).to(text) + self.type_embed[0]
        image = image + sincos_2d((h, w), Dd).to(image) + self.type_embed[1]
        pad = batch.get(keys.ATTENTION_MASK)
        attn = None
        if pad is not None:  # padding keys stay hidden in the decoder too
            valid = torch.cat([pad.bool(), pad.new_ones(pad.shape[0], h * w).bool()], dim=1)
            attn = valid[:, None, None, :]  # (B, 1, 1, T + N)
        x, _ = dec.blocks(torch.cat([text, image], dim=1), attn)  # (B, T + N, Dd)
        return x[:, :T], x[:, T:]

    def after_optimizer_step(self) -> None:
        pass

    @torch.no_grad()
    def predict_pixels(self, views: Mapping[str, Any], batch: Mapping[str, Any]) -> torch.Tensor:
        """Predicted pixels of every patch `(B, N, P*P*C)` (reconstruction pictures)."""
        pred = self.to_pixels(self.decode(views[MASKED_PAIR], batch)[1])
        return self.target.to_pixels(pred, batch[keys.PIXEL_VALUES])

    def forward(self, views: Mapping[str, Any], batch: Mapping[str, Any]) -> ObjectiveOutput:
        """Args:
            views: ``{"masked_pair": EncoderOutput}`` encoded from visible tokens only.
            batch: ``INPUT_IDS``, ``MLM_LABELS`` (-100 = not dropped), ``TEXT_KEEP_IDS``,
                ``PIXEL_VALUES`` and ``IMAGE_KEEP_IDS`` / ``MIM_MASK``.

        Returns:
            the weighted sum; metrics ``mim_loss``, ``mlm_loss``, ``mlm_acc``.
        """
        out = views[MASKED_PAIR]
        if out.text_keep_ids is None or out.image_keep_ids is None:
            raise ValueError("the m3ae head needs text and patches dropped from the encoder")
        text, image = self.decode(out, batch)
        labels = batch[keys.MLM_LABELS]
        picked = labels != IGNORE_INDEX  # (B, T)
        logits = self.to_text(text[picked])  # (M, V)
        mlm = cross_entropy_mean(logits, labels[picked])
        grid = out.image_grid
        masked = masked_patches(batch, out.image_keep_ids, grid[0] * grid[1])  # (B, N)
        pred = self.to_pixels(image[masked])  # (P, P*P*C)
        mim, _ = self.target.loss(pred, self.target.targets(batch[keys.PIXEL_VALUES])[masked])
        loss = self.image_weight * mim + self.text_weight * mlm
        metrics = {
            "mim_loss": mim.detach(),
            "mlm_loss": mlm.detach(),
            "mlm_acc": accuracy(logits, labels[picked]),
        }
        return ObjectiveOutput(loss=loss, metrics=metrics)


@register_objective("m3ae")
def build_m3ae(
    model: nn.Module,
    built: Mapping[str, nn.Module],
    decoder_depth: int = 2,
    decoder_dim: int | None = None,
    decoder_heads: int | None = None,
    image_weight: float = 1.0,
    text_weight: float = 0.5,
    norm_pix_loss: bool = False,
    mask_ratio: float = 0.75,
    text_mask_ratio: float = 0.75,
) -> M3AEHead:
    """M3AE head; the decoder defaults to the encoder's width and heads.

    Args:
        mask_ratio: share of patches dropped before the encoder (M3AE: 0.75).
        text_mask_ratio: share of text tokens dropped before the encoder (M3AE: 0.75).
    """
    c = model.config
    for name, ratio in (("mask_ratio", mask_ratio), ("text_mask_ratio", text_mask_ratio)):
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"m3ae {name} must be in (0, 1), got {ratio}")
    target = PixelTarget(c.patch_size, c.num_channels, norm_pix_loss)
    return M3AEHead(
        c.hidden_size,
        c.vocab_size,
        target,
        decoder_dim or c.hidden_size,
        decoder_depth,
        decoder_heads or c.num_attention_heads,
        image_weight,
        text_weight,
        c.layer_norm_eps,
        text_masking=TextMasking(text_mask_ratio),
        patches=PatchMasking(model.image.grid, mask_ratio),
    )
