"""Word-patch alignment (ViLT's WPA, UNITER's WRA): an optimal-transport distance between the
text token states and the image patch states of each pair, pulled down for matched pairs and
pushed up for mismatched ones.

As ViLT's ``compute_itm_wpa``: cosine cost; the text [CLS], the last real text token ([SEP])
and the image [CLS] take no part; the transport plan comes from the inexact proximal point
method (IPOT: beta 0.5, 50 iterations, k = 1) without gradient, in fp32; the distance is
``trace(C @ T)``; loss = (sum of matched distances - sum of mismatched ones) / rows. ViLT
weights it 0.1 (``wpa: {weight: 0.1}``). It reads the ``pair`` view, so with ITM enabled it
scores ITM's pairs at no extra encoder pass; alone, the view draws ViLT's negatives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from onetower.data import keys
from onetower.objectives.base import ObjectiveOutput
from onetower.objectives.registry import register_objective
from onetower.objectives.views import PAIR, PairView


@torch.no_grad()
def ipot(
    cost: torch.Tensor,
    text_pad: torch.Tensor,
    image_pad: torch.Tensor,
    beta: float = 0.5,
    iterations: int = 50,
    k: int = 1,
) -> torch.Tensor:
    """The IPOT transport plan between uniform marginals over the real positions.

    Args:
        cost: `(B, M, N)` text x image costs (padded entries are ignored).
        text_pad: bool `(B, M)` True = not a real text position.
        image_pad: bool `(B, N)` True = not a real image position.
        beta: proximal step (the entropic scale).
        iterations: outer iterations; k: Sinkhorn iterations per outer one.

    Returns:
        the plan `(B, N, M)` (image x text, as ViLT's), zero at padded entries.
    """
    B, M, N = cost.shape
    joint_pad = (text_pad[:, :, None] | image_pad[:, None, :]).transpose(1, 2)  # (B, N, M)
    # a row with no real position (a caption of [CLS] [SEP] only) gets a zero plan, not NaN
    text_len = (~text_pad).sum(1).clamp(min=1).to(cost.dtype)  # (B,)
    image_len = (~image_pad).sum(1).clamp(min=1).to(cost.dtype)
    sigma = torch.ones(B, M, dtype=cost.dtype, device=cost.device) / text_len[:, None]
    sigma = sigma.masked_fill(text_pad, 0)
    plan = torch.ones(B, N, M, dtype=cost.dtype, device=cost.device).masked_fill(joint_pad, 0)
    kernel = torch.exp(-cost.transpose(1, 2) / beta).masked_fill(joint_pad, 0)  # (B, N, M)
    # large additive terms keep the padded marginals at ~0 without dividing by zero
    text_big = (text_pad.to(cost.dtype) * 1e4)[:, None, :]  # (B, 1, M)
    image_big = (image_pad.to(cost.dtype) * 1e4)[:, None, :]  # (B, 1, N)
    for _ in range(iterations):
        q = kernel * plan  # (B, N, M)
        sigma = sigma.view(B, M, 1)
        for _ in range(k):
            delta = 1 / (image_len[:, None, None] * (q @ sigma).view(B, 1, N) + image_big)
            sigma = 1 / (text_len[:, None, None] * (delta @ q) + text_big)  # (B, 1, M)
        plan = delta.view(B, N, 1) * q * sigma  # (B, N, M)
    return plan.masked_fill(joint_pad, 0)


def ot_distance(
    text: torch.Tensor,
    image: torch.Tensor,
    text_pad: torch.Tensor,
    image_pad: torch.Tensor,
    beta: float = 0.5,
    iterations: int = 50,
    k: int = 1,
) -> torch.Tensor:
    """Per-row OT distance `(B,)` between text states `(B, M, D)` and image states
    `(B, N, D)` under the cosine cost; the gradient flows through the cost only."""
    cost = 1 - F.normalize(text, dim=-1, eps=1e-5) @ F.normalize(image, dim=-1, eps=1e-5).transpose(
        1, 2
    )
    cost = cost.masked_fill(text_pad[:, :, None] | image_pad[:, None, :], 0)  # (B, M, N)
    plan = ipot(cost.detach(), text_pad, image_pad, beta, iterations, k)  # (B, N, M)
    return torch.diagonal(cost @ plan, dim1=1, dim2=2).sum(-1)  # trace of (B, M, M)


class WPAHead(nn.Module):
    """Word-patch alignment on the ``pair`` view (no parameters of its own).

    Args:
        beta, iterations, k: IPOT settings (ViLT: 0.5, 50, 1).
    """

    modalities = frozenset({"text", "image"})

    def __init__(self, beta: float = 0.5, iterations: int = 50, k: int = 1) -> None:
        super().__init__()
        if beta <= 0 or iterations < 1 or k < 1:
            raise ValueError(
                f"wpa needs beta > 0, iterations >= 1, k >= 1; got {beta}, {iterations}, {k}"
            )
        self.beta, self.iterations, self.k = beta, iterations, k
        self.views = (PairView(),)

    def applies_to(self, batch: Mapping[str, Any]) -> bool:
        return keys.INPUT_IDS in batch and keys.PIXEL_VALUES in batch

    def after_optimizer_step(self) -> None:
        pass

    def predict_pixels(self, views: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        return None

    def forward(self, views: Mapping[str, Any], batch: Mapping[str, Any]) -> ObjectiveOutput:
        """Args:
            views: ``{"pair": PairOutput}`` (matched and mismatched rows, ``itm_labels``).
            batch: unused (the pairs come with the view).

        Returns:
            loss; metrics ``pos_dist`` and ``neg_dist`` (mean distance of each kind of row).
        """
        pair = views[PAIR]
        out = pair.encoder
        text = out.tokens("text").float()  # (R, T, D)
        image = out.tokens("image_patches").float()  # (R, N, D): the image [CLS] left out
        R, T = text.shape[:2]
        valid = out.token_mask("text")
        valid = torch.ones(R, T, dtype=torch.bool, device=text.device) if valid is None else valid
        last = valid.long().cumsum(1).argmax(1)  # (R,) the last real token: [SEP]
        text_pad = ~valid
        text_pad[:, 0] = True  # [CLS]
        text_pad = text_pad.scatter(1, last[:, None], True)
        image_valid = out.token_mask("image_patches")
        image_pad = torch.zeros(image.shape[:2], dtype=torch.bool, device=image.device)
        if image_valid is not None:
            image_pad = ~image_valid
        with torch.autocast(text.device.type, enabled=False):
            dist = ot_distance(text, image, text_pad, image_pad, self.beta, self.iterations, self.k)
        pos = (pair.itm_labels == 1).float()  # (R,) masked sums: no host sync
        loss = ((dist * pos).sum() - (dist * (1 - pos)).sum()) / R
        with torch.no_grad():
            metrics = {
                "pos_dist": (dist * pos).sum() / pos.sum().clamp(min=1),
                "neg_dist": (dist * (1 - pos)).sum() / (1 - pos).sum().clamp(min=1),
            }
        return ObjectiveOutput(loss=loss, metrics=metrics)


@register_objective("wpa")
def build_wpa(
    model: nn.Module,
    built: Mapping[str, nn.Module],
    beta: float = 0.5,
    iterations: int = 50,
    k: int = 1,
) -> WPAHead:
    """WPA head (ViLT's settings by default)."""
    return WPAHead(beta, iterations, k)
