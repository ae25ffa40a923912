"""MIM head: pixel (raw / normalised, dropped or mask-token patches) and codebook targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onetower.data import keys
from onetower.data.masking import keep_ids_from_mask
from onetower.objectives import (
    MASKED_PAIR,
    MIMHead,
    TokenTarget,
    build_objective,
    reinsert_mask_tokens,
)
from onetower.unimodal import patchify

P = 8


def naive_pixel_loss(pred_full, pixels, masked, norm):
    """Loop over samples and patches: MSE over the patch's pixels, mean over masked patches."""
    total, count = 0.0, 0
    B, C, H, W = pixels.shape
    for b in range(B):
        for n in range(masked.shape[1]):
            if not masked[b, n]:
                continue
            r, c = divmod(n, W // P)
            patch = pixels[b, :, r * P : (r + 1) * P, c * P : (c + 1) * P]  # (C, P, P)
            target = patch.permute(1, 2, 0).reshape(-1)  # (p, q, c) order, as patchify
            if norm:
                target = (target - target.mean()) / (target.var() + 1e-6) ** 0.5
            total = total + ((pred_full[b, n] - target) ** 2).mean()
            count += 1
    return total / count


def _encode(model, batch, masking):
    kw = dict(pixel_values=batch[keys.PIXEL_VALUES])
    if masking == "drop":
        kw["image_keep_ids"] = batch[keys.IMAGE_KEEP_IDS]
    else:
        kw["bool_masked_pos"] = batch[keys.MIM_MASK]
    return model(input_ids=batch[keys.MLM_INPUT_IDS], **kw)


@pytest.mark.parametrize(
    "masking,norm,depth", [("drop", True, 1), ("drop", False, 1), ("mask_token", False, 0)]
)
def test_pixel_mim_matches_loop(model_factory, batch_factory, masking, norm, depth):
    model = model_factory(use_mask_token=True)
    batch = batch_factory()
    opts = dict(target="pixel", norm_pix_loss=norm, masking=masking, decoder_depth=depth)
    head = build_objective("mim", model, opts, {})
    out = _encode(model, batch, masking)
    res = head({MASKED_PAIR: out}, batch)
    feats = head.predictor(out.tokens("image_patches"), out.image_keep_ids, out.image_grid)
    ref = naive_pixel_loss(head.output(feats), batch[keys.PIXEL_VALUES], batch[keys.MIM_MASK], norm)
    torch.testing.assert_close(res.loss, ref, atol=1e-5, rtol=1e-5)


def test_reinsert_mask_tokens_loop():
    g = torch.Generator().manual_seed(0)
    visible = torch.randn(2, 3, 4, generator=g)
    keep = torch.tensor([[0, 2, 5], [1, 4, -1]])
    token = torch.randn(1, 1, 4, generator=g)
    full = reinsert_mask_tokens(visible, keep, 6, token)
    for b in range(2):
        for n in range(6):
            slots = [k for k in range(3) if keep[b, k] == n]
            want = visible[b, slots[0]] if slots else token[0, 0]
            assert torch.equal(full[b, n], want)


def test_keep_ids_from_mask_pads_with_minus_one():
    mask = torch.tensor([[True, False, False, True], [False, True, True, True]])
    assert keep_ids_from_mask(mask).tolist() == [[1, 2], [0, -1]]


class ToyCodebook(nn.Module):
    """Nearest of K random codewords to each flattened patch: ids `(B, N)`."""

    def __init__(self, k: int = 8) -> None:
        super().__init__()
        self.codes = nn.Parameter(
            torch.randn(k, P * P * 3, generator=torch.Generator().manual_seed(1))
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = patchify(pixels, P)  # (B, N, P*P*C)
        dist = (patches[:, :, None] - self.codes[None, None]).pow(2).sum(-1)  # (B, N, K)
        return dist.argmin(-1)


def test_token_target_cross_entropy_matches_loop(model_factory, batch_factory):
    model, batch = model_factory(use_mask_token=True), batch_factory()
    book = ToyCodebook()
    opts = dict(
        target="tokens", tokenizer=book, vocab_size=8, masking="mask_token", decoder_depth=0
    )
    head = build_objective("mim", model, opts, {})
    assert isinstance(head.target, TokenTarget) and not book.codes.requires_grad
    out = _encode(model, batch, "mask_token")
    res = head({MASKED_PAIR: out}, batch)
    logits = head.output(head.predictor(out.tokens("image_patches"), None, out.image_grid))
    ids, masked = book(batch[keys.PIXEL_VALUES]), batch[keys.MIM_MASK]
    terms = [
        -F.log_softmax(logits[b, n], 0)[ids[b, n]]
        for b in range(ids.shape[0])
        for n in range(ids.shape[1])
        if masked[b, n]
    ]
    torch.testing.assert_close(res.loss, torch.stack(terms).mean(), atol=1e-5, rtol=1e-5)
    assert "acc" in res.metrics and not res.metrics["acc"].requires_grad


def test_mim_nothing_masked_is_zero_with_gradients(model_factory, batch_factory):
    model, batch = model_factory(use_mask_token=True), batch_factory()
    batch[keys.MIM_MASK] = torch.zeros_like(batch[keys.MIM_MASK])
    head = build_objective("mim", model, {"masking": "mask_token"}, {})
    res = head({MASKED_PAIR: _encode(model, batch, "mask_token")}, batch)
    assert res.loss.item() == 0.0
    res.loss.backward()
    assert head.output.weight.grad is not None and torch.isfinite(head.output.weight.grad).all()
    assert model.image.patch_embed.proj.weight.grad is not None


def test_mim_option_errors(model_factory):
    model = model_factory()  # no mask token
    with pytest.raises(ValueError, match="use_mask_token"):
        build_objective("mim", model, {"masking": "mask_token"}, {})
    with pytest.raises(ValueError, match="decoder_depth"):
        build_objective("mim", model, {"masking": "drop", "decoder_depth": 0}, {})
    with pytest.raises(ValueError, match="'decoder_layers'"):
        build_objective("mim", model, {"decoder_layers": 2}, {})
    assert isinstance(build_objective("mim", model, {}, {}), MIMHead)
