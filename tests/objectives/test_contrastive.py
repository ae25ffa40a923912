"""Contrastive loss: loop reference, temperature, patch dropout, parity with FLAVA."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from onetower.data import keys
from onetower.objectives import (
    IMAGE,
    LOGIT_SCALE_INIT,
    LOGIT_SCALE_MAX,
    TEXT,
    ImageView,
    StepViews,
    TextView,
    build_objective,
    contrastive_loss,
)


def naive_infonce(img: torch.Tensor, txt: torch.Tensor, scale: float) -> torch.Tensor:
    """Both directions, one row at a time."""
    B = img.shape[0]
    i2t = t2i = 0.0
    for i in range(B):
        row_i = torch.stack([scale * (img[i] * txt[j]).sum() for j in range(B)])
        row_t = torch.stack([scale * (txt[i] * img[j]).sum() for j in range(B)])
        i2t = i2t - F.log_softmax(row_i, 0)[i]
        t2i = t2i - F.log_softmax(row_t, 0)[i]
    return (i2t / B + t2i / B) / 2


def test_contrastive_loss_matches_loop():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    res = contrastive_loss(img, txt, torch.tensor(2.0))
    torch.testing.assert_close(res.loss, naive_infonce(img, txt, math.exp(2.0)))
    assert res.labels.tolist() == list(range(5))


def test_temperature_init_and_clamp(model_factory):
    head = build_objective("contrastive", model_factory(), {"proj_dim": 16}, {})
    assert math.isclose(head.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    assert LOGIT_SCALE_INIT == math.log(1 / 0.07) and LOGIT_SCALE_MAX == math.log(100)
    with torch.no_grad():
        head.logit_scale.fill_(7.0)
    assert math.isclose(head.scale().item(), math.log(100), rel_tol=1e-6)
    with torch.no_grad():
        head.logit_scale.fill_(-1.0)
    assert head.scale().item() == 0.0
    head.after_optimizer_step()
    assert head.logit_scale.item() == 0.0


def test_head_on_views_and_patch_dropout(model_factory, batch_factory):
    model, batch = model_factory(), batch_factory()
    head = build_objective("contrastive", model, {"patch_dropout": 0.5}, {})
    opts = {TEXT: TextView(), IMAGE: ImageView(patch_dropout=0.5)}
    assert head.views == tuple(opts.values())
    views = StepViews(model.train(), batch, opts, torch.Generator().manual_seed(0))
    res = head({TEXT: views[TEXT], IMAGE: views[IMAGE]}, batch)
    assert views[IMAGE].image_keep_ids.shape == (4, 8)  # half of 16 patches kept
    assert views[TEXT].modality_slices.keys() == {"text"}
    img = F.normalize(head.image_proj(views[IMAGE].cls("image")), dim=-1)
    txt = F.normalize(head.text_proj(views[TEXT].cls("text")), dim=-1)
    torch.testing.assert_close(res.loss, naive_infonce(img, txt, math.exp(LOGIT_SCALE_INIT)))
    assert set(res.metrics) == {"i2t_acc", "t2i_acc", "temperature"}
    model.eval()
    eval_views = StepViews(model, batch, opts, torch.Generator().manual_seed(0))
    assert eval_views[IMAGE].image_keep_ids is None  # no patch dropout outside training
    assert keys.PIXEL_VALUES in batch


def test_tower_models_use_unfused_tower_states(model_factory, batch_factory):
    model = model_factory(text_tower_layers=1, image_tower_layers=1)
    batch = batch_factory()
    views = StepViews(model, batch, {TEXT: TextView()}, torch.Generator())
    ref = model(input_ids=batch[keys.INPUT_IDS], attention_mask=batch[keys.ATTENTION_MASK])
    torch.testing.assert_close(views[TEXT].cls("text"), ref.unimodal_states["text"][:, 0])


def test_matches_transformers_flava_global_contrastive():
    from transformers import FlavaConfig, FlavaForPreTraining

    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    cfg = FlavaConfig(
        image_config=dict(**small, image_size=32, patch_size=8),
        text_config=dict(**small, vocab_size=100, max_position_embeddings=16),
        multimodal_config=dict(**small),
        image_codebook_config=dict(hidden_size=8, num_groups=1, num_blocks_per_group=1),
        hidden_size=32,
        projection_dim=16,
        init_codebook=False,
        mim_weight=0.0,
        mlm_weight=0.0,
        itm_weight=0.0,
        mmm_image_weight=0.0,
        mmm_text_weight=0.0,
    )
    torch.manual_seed(0)
    flava = FlavaForPreTraining(cfg).train()
    with torch.no_grad():
        flava.flava.logit_scale.fill_(1.7)  # inside [0, ln 100], so neither side clamps
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (6, 8), generator=g)
    out = flava(
        input_ids=ids,
        input_ids_masked=ids,
        pixel_values=torch.randn(6, 3, 32, 32, generator=g),
        mim_labels=torch.zeros(6, 16, dtype=torch.long),
        return_loss=True,
    )
    # The same embeddings FLAVA feeds its head: projected, L2-normalised encoder CLS states.
    img = F.normalize(flava.flava.image_projection(out.image_embeddings[:, 0]), dim=-1)
    txt = F.normalize(flava.flava.text_projection(out.text_embeddings[:, 0]), dim=-1)
    ours = contrastive_loss(img, txt, flava.flava.logit_scale)
    torch.testing.assert_close(ours.loss, out.loss_info.global_contrastive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.logits_per_image, out.contrastive_logits_per_image)
    torch.testing.assert_close(ours.logits_per_text, out.contrastive_logits_per_text)
    (g_ref,) = torch.autograd.grad(out.loss_info.global_contrastive, flava.flava.logit_scale)
    (g_ours,) = torch.autograd.grad(ours.loss, flava.flava.logit_scale)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-5, rtol=1e-5)
