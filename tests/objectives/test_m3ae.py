"""M3AE joint decoder: loss against a per-sample loop, dropped tokens never encoded."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onetower.data import keys
from onetower.objectives import MASKED_PAIR, StepViews, build_objective
from onetower.unimodal import patchify, sincos_1d, sincos_2d


def test_m3ae_loss_matches_loop(model_factory, batch_factory):
    model = model_factory(text_position="sincos", image_position="sincos")
    head = build_objective("m3ae", model, {"decoder_depth": 1}, {})
    batch = batch_factory(batch_size=3, mlm_prob=0.5)
    out = StepViews(model, batch, {MASKED_PAIR: head.views[0]}, None)[MASKED_PAIR]
    assert out.tokens("text").shape[1] == batch[keys.TEXT_KEEP_IDS].shape[1]  # dropped text
    res = head({MASKED_PAIR: out}, batch)

    T, (h, w) = batch[keys.INPUT_IDS].shape[1], out.image_grid
    D = head.decoder.mask_token.shape[-1]
    mlm_terms, mim_terms = [], []
    for b in range(3):  # rebuild each sample's decoder input by hand
        text = head.decoder.mask_token[0].expand(T, D).clone()
        for j, t in enumerate(batch[keys.TEXT_KEEP_IDS][b].tolist()):
            if t >= 0:
                text[t] = head.decoder.embed(out.tokens("text")[b, j])
        image = head.decoder.mask_token[0].expand(h * w, D).clone()
        for j, n in enumerate(batch[keys.IMAGE_KEEP_IDS][b].tolist()):
            image[n] = head.decoder.embed(out.tokens("image_patches")[b, j])
        x = torch.cat(
            [
                text + sincos_1d(T, D) + head.type_embed[0],
                image + sincos_2d((h, w), D) + head.type_embed[1],
            ]
        )
        real = batch[keys.ATTENTION_MASK][b].bool()
        keep = torch.cat([real, torch.ones(h * w, dtype=torch.bool)])
        y, _ = head.decoder.blocks(x[None], keep[None, None, None])
        labels = batch[keys.MLM_LABELS][b]
        for t in range(T):
            if labels[t] != -100:
                mlm_terms.append(F.cross_entropy(head.to_text(y[0, t])[None], labels[t][None]))
        target = patchify(batch[keys.PIXEL_VALUES][b : b + 1], 8)[0]
        for n in range(h * w):
            if batch[keys.MIM_MASK][b, n]:
                mim_terms.append((head.to_pixels(y[0, T + n]) - target[n]).pow(2).mean())
    ref = 1.0 * torch.stack(mim_terms).mean() + 0.5 * torch.stack(mlm_terms).mean()
    torch.testing.assert_close(res.loss, ref, rtol=1e-4, atol=1e-5)


def test_dropped_text_equals_masked_attention(model_factory, batch_factory):
    """Encoding only kept tokens == encoding all with the dropped ones hidden from attention."""
    model = model_factory().eval()
    batch = batch_factory(batch_size=2, mlm_prob=0.5)
    keep = batch[keys.TEXT_KEEP_IDS]
    ids, mask = batch[keys.INPUT_IDS], batch[keys.ATTENTION_MASK]
    dropped = model(input_ids=ids, attention_mask=mask, text_keep_ids=keep)
    hidden = torch.zeros_like(mask)
    for b in range(2):
        hidden[b, keep[b][keep[b] >= 0]] = 1
    full = model(input_ids=ids, attention_mask=hidden)
    for b in range(2):
        for j, t in enumerate(keep[b].tolist()):
            if t >= 0:
                torch.testing.assert_close(
                    dropped.tokens("text")[b, j], full.tokens("text")[b, t], atol=1e-5, rtol=0
                )
    torch.testing.assert_close(dropped.pooler_output, full.pooler_output, atol=1e-5, rtol=0)
