"""Image-text contrastive loss (CLIP / FLAVA global contrastive / BEiT-3 retrieval).

Gradient convention across processes (FLAVA ``global_backprop_contrastive``, open_clip
``local_loss=True, gather_with_grad=True``): each rank scores its *local* rows against the
*gathered* features of all ranks, with labels offset by ``rank * B_local``, and the gather
passes gradients back to the rank that made each feature. The loss on a rank is the mean over
its local rows; with equal local batches the mean of the rank losses equals the single-process
loss on the concatenated batch, and DDP's gradient *averaging* then yields exactly that loss's
gradient (the raw per-rank gradient before averaging is ``world_size`` times it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from onetower.data import keys
from onetower.objectives.base import ObjectiveOutput
from onetower.objectives.distributed import gather_no_grad, gather_with_grad, world
from onetower.objectives.registry import register_objective
from onetower.objectives.views import IMAGE, TEXT, ImageView, TextView
from onetower.outputs import EncoderOutput

#: CLIP's initial temperature 0.07, as a log logit scale.
LOGIT_SCALE_INIT = math.log(1 / 0.07)
#: Largest logit scale, ln 100 (temperature >= 0.01), as open_clip and FLAVA (4.6052).
LOGIT_SCALE_MAX = math.log(100)


@dataclass
class ContrastiveResult:
    """Loss and logits of :func:`contrastive_loss`.

    Attributes:
        loss: (CE_image->text + CE_text->image) / 2 over the local rows.
        logits_per_image: `(B, world * B)` local images vs all texts.
        logits_per_text: `(B, world * B)` local texts vs all images.
        labels: `(B,)` column of each local row's positive.
    """

    loss: torch.Tensor
    logits_per_image: torch.Tensor
    logits_per_text: torch.Tensor
    labels: torch.Tensor


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    gather: bool = True,
) -> ContrastiveResult:
    """Symmetric InfoNCE with local-by-global logits (FLAVA ``FlavaGlobalContrastiveHead``).

    Args:
        image_embeds: L2-normalised `(B, E)`; row i pairs with text row i.
        text_embeds: L2-normalised `(B, E)`.
        logit_scale: scalar log of the inverse temperature (already clamped).
        gather: gather features across processes with gradient (no-op on one process).

    Returns:
        :class:`ContrastiveResult`.
    """
    rank, size = world() if gather else (0, 1)
    all_images = gather_with_grad(image_embeds) if size > 1 else image_embeds  # (world*B, E)
    all_texts = gather_with_grad(text_embeds) if size > 1 else text_embeds  # (world*B, E)
    scale = logit_scale.exp()
    logits_per_image = scale * image_embeds @ all_texts.t()  # (B, world*B)
    logits_per_text = scale * text_embeds @ all_images.t()  # (B, world*B)
    B = image_embeds.shape[0]
    labels = torch.arange(B, device=image_embeds.device) + rank * B
    loss = (
        F.cross_entropy(logits_per_image.float(), labels)
        + F.cross_entropy(logits_per_text.float(), labels)
    ) / 2
    return ContrastiveResult(loss, logits_per_image, logits_per_text, labels)


def text_features(out: EncoderOutput) -> torch.Tensor:
    """The text CLS state `(B, D)` of a ``text`` view (tower CLS when the model has towers)."""
    return out.cls("text")


def image_features(out: EncoderOutput) -> torch.Tensor:
    """The image CLS state `(B, D)`, or the mean of real patch states without an image CLS."""
    if "image" in out.cls_positions:
        return out.cls("image")
    patches = out.tokens("image_patches")  # (B, N, D)
    mask = out.token_mask("image_patches")
    if mask is None:
        return patches.mean(dim=1)
    w = mask.unsqueeze(-1).to(patches.dtype)  # (B, N, 1)
    return (patches * w).sum(1) / w.sum(1).clamp(min=1)


class ContrastiveHead(nn.Module):
    """Projections, L2 norm, learnable temperature and the symmetric InfoNCE loss.

    Args:
        dim: encoder width D.
        proj_dim: embedding width E.
        gather: gather features across processes with gradient.
        patch_dropout: fraction of image patches dropped from the ``image`` view in training
            (FLIP).
        bias: bias on the two projections (FLAVA's ``text_projection`` / ``image_projection``
            have one; CLIP's do not).
    """

    modalities = frozenset({"text", "image"})

    def __init__(
        self,
        dim: int,
        proj_dim: int,
        gather: bool = True,
        patch_dropout: float = 0.0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= patch_dropout < 1.0:
            raise ValueError(f"patch_dropout must be in [0, 1), got {patch_dropout}")
        self.text_proj = nn.Linear(dim, proj_dim, bias=bias)
        self.image_proj = nn.Linear(dim, proj_dim, bias=bias)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.gather = gather
        self.views = (TextView(), ImageView(patch_dropout=patch_dropout))

    def applies_to(self, batch: Mapping[str, Any]) -> bool:
        return keys.INPUT_IDS in batch and keys.PIXEL_VALUES in batch  # clean text and image

    def scale(self) -> torch.Tensor:
        """The logit scale clamped to [0, ln 100]; the clamp is functional, see
        :meth:`after_optimizer_step` for keeping the parameter itself in range."""
        return self.logit_scale.clamp(0.0, LOGIT_SCALE_MAX)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Clamp the logit scale parameter in place (open_clip does this after each step)."""
        self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)

    def predict_pixels(self, views: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        return None

    def embed(self, text: EncoderOutput, image: EncoderOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised ``(image (B, E), text (B, E))`` embeddings of the two views."""
        img = F.normalize(self.image_proj(image_features(image)), dim=-1)
        txt = F.normalize(self.text_proj(text_features(text)), dim=-1)
        return img, txt

    @torch.no_grad()
    def similarity(self, text: EncoderOutput, image: EncoderOutput) -> torch.Tensor:
        """Detached scaled image->text similarities `(B, B)` of the local batch (ITM mining)."""
        img, txt = self.embed(text, image)
        return self.scale().exp() * img @ txt.t()

    def forward(self, views: Mapping[str, Any], batch: Mapping[str, Any]) -> ObjectiveOutput:
        """Args:
            views: ``{"text": EncoderOutput, "image": EncoderOutput}`` of the same B pairs.
            batch: unused (pairs are aligned by row).

        Returns:
            loss; metrics ``i2t_acc``, ``t2i_acc`` (in-batch retrieval over the gathered
            batch) and ``temperature`` (1 / exp of the clamped logit scale).
        """
        img, txt = self.embed(views[TEXT], views[IMAGE])
        res = contrastive_loss(img, txt, self.scale(), gather=self.gather)
        with torch.no_grad():
            i2t = (res.logits_per_image.argmax(-1) == res.labels).float().mean()
            t2i = (res.logits_per_text.argmax(-1) == res.labels).float().mean()
            # Average over ranks so every process reports the global retrieval accuracy.
            accs = gather_no_grad(torch.stack([i2t, t2i])[None]).mean(0) if self.gather else None
            if accs is not None:
                i2t, t2i = accs[0], accs[1]
        metrics = {"i2t_acc": i2t, "t2i_acc": t2i, "temperature": (-self.scale()).exp().detach()}
        return ObjectiveOutput(loss=res.loss, metrics=metrics)


@register_objective("contrastive")
def build_contrastive(
    model: nn.Module,
    built: Mapping[str, nn.Module],
    proj_dim: int | None = None,
    gather: bool = True,
    patch_dropout: float = 0.0,
    bias: bool = False,
) -> ContrastiveHead:
    """Contrastive head; ``proj_dim`` defaults to the encoder width; ``bias`` on the
    projections (a converted FLAVA has it)."""
    D = model.config.hidden_size
    return ContrastiveHead(D, proj_dim or D, gather=gather, patch_dropout=patch_dropout, bias=bias)
