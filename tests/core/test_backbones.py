"""Backbone init: a random timm ViT and random BERT / RoBERTa saved in their own layouts
initialise the single-stream encoder and the FLAVA-style towers; image-only and text-only
outputs equal the source models' to 1e-5."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models import save_for_hf
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

from onetower import OneTowerConfig, OneTowerModel
from onetower.backbones import (
    BackboneError,
    config_fields,
    init_from_backbones,
    load_hf_text,
    load_timm,
)

from ..conftest import debug_config

ATOL = 1e-5
VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0)


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    vit = randomise(timm.create_model("vit_tiny_patch16_224", pretrained=False, **VIT))
    folder = tmp_path_factory.mktemp("vit")
    save_for_hf(vit, folder)
    return folder


def text_config(cls, **kw):
    base = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        vocab_size=200,
        max_position_embeddings=40,
    )
    return cls(**{**base, **kw})


@pytest.fixture(scope="module", params=["bert", "roberta"])
def text_dir(request, tmp_path_factory):
    cls, cfg = (BertModel, BertConfig) if request.param == "bert" else (RobertaModel, RobertaConfig)
    model = randomise(cls(text_config(cfg), add_pooling_layer=False))
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return folder


def build(image=None, text=None, **fields) -> OneTowerModel:
    base = dict(vocab_size=200, max_text_len=16, image_size=32, patch_size=8, layer_norm_eps=1e-6)
    base.update(hidden_size=64, num_attention_heads=2, intermediate_size=128, num_hidden_layers=2)
    model = OneTowerModel(OneTowerConfig(**{**base, **fields}))
    return init_from_backbones(model, image, text).eval()


def inputs():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 200, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    return ids, mask, torch.randn(3, 3, 32, 32, generator=g)


def test_single_stream_from_a_timm_vit_and_bert_embeddings(vit_dir, text_dir) -> None:
    vit = load_timm({"timm": f"local-dir:{vit_dir}"})
    text = load_hf_text({"hf": str(text_dir)})
    model = build(vit, text, text_layer_norm_eps=text.config.layer_norm_eps)
    ids, mask, px = inputs()
    with torch.no_grad():
        ref = vit.forward_features(px)  # (B, 1 + N, D) after the final norm
        got = model(pixel_values=px).last_hidden_state
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
        # ViLT's layout: BERT's embeddings only (the fusion blocks are the ViT's)
        emb = text.embeddings(input_ids=ids)
        torch.testing.assert_close(model.text(ids), emb, atol=ATOL, rtol=0)


def test_towers_from_a_timm_vit_and_a_bert_family_encoder(vit_dir, text_dir) -> None:
    vit = load_timm({"timm": f"local-dir:{vit_dir}"})
    text = load_hf_text({"hf": str(text_dir)})
    model = build(
        vit,
        text,
        text_tower_layers=2,
        image_tower_layers=2,
        text_tower_post_norm=True,
        text_layer_norm_eps=1e-12,
        num_hidden_layers=1,
    )
    ids, mask, px = inputs()
    with torch.no_grad():
        img = model(pixel_values=px, fuse=False).unimodal_states["image"]
        torch.testing.assert_close(img, vit.forward_features(px), atol=ATOL, rtol=0)
        txt = model(input_ids=ids, attention_mask=mask, fuse=False).unimodal_states["text"]
        ref = text(input_ids=ids, attention_mask=mask).last_hidden_state
        real = mask.bool()
        torch.testing.assert_close(txt[real], ref[real], atol=ATOL, rtol=0)


def test_mismatches_name_both_values(vit_dir, text_dir) -> None:
    vit = load_timm({"timm": f"local-dir:{vit_dir}"})
    text = load_hf_text({"hf": str(text_dir)})
    with pytest.raises(BackboneError, match="width .* the model has 128, timm .* has 64"):
        build(vit, hidden_size=128)
    with pytest.raises(BackboneError, match="attention heads mismatch: the model has 4"):
        build(vit, num_attention_heads=4)
    with pytest.raises(BackboneError, match=r"position table \(image_size\) mismatch: .*64.*32"):
        build(vit, image_size=64)
    with pytest.raises(BackboneError, match=r"depth \(num_hidden_layers\) mismatch: .* 3, .* 2"):
        build(vit, num_hidden_layers=3)
    with pytest.raises(BackboneError, match="text_tower_layers mismatch: the model has 1"):
        build(None, text, text_tower_layers=1, text_tower_post_norm=True, text_layer_norm_eps=1e-12)
    with pytest.raises(BackboneError, match="vocab_size mismatch: the model has 300"):
        build(None, text, vocab_size=300, text_layer_norm_eps=1e-12)
    with pytest.raises(BackboneError, match="cannot load timm model"):
        load_timm({"timm": f"local-dir:{text_dir}"})  # a BERT folder is not a timm model
    with pytest.raises(BackboneError, match="is a 'timm_wrapper' model; text backbones are"):
        load_hf_text({"hf": str(vit_dir)})
    with pytest.raises(BackboneError, match="unknown option"):
        load_timm({"timm": "vit_tiny_patch16_224", "pretrained": True})


def test_pretraining_starts_from_backbones(tmp_path, worlds, vit_dir) -> None:
    """The YAML stanza: model.init_image builds the encoder from the ViT."""
    from onetower.pretraining import pretrain

    cfg = debug_config(
        "vilt_like",
        tmp_path,
        "model.size=null",
        f"model.init_image={{timm: 'local-dir:{vit_dir}'}}",
        "model.num_hidden_layers=2",
        "train.max_steps=2",
        world=worlds(8),
    )
    result = pretrain(cfg)
    assert len(result.history["loss"]) >= 1
    bad = debug_config(
        "vilt_like",
        tmp_path / "bad",
        "model.size=null",
        f"model.init_image={{timm: 'local-dir:{vit_dir}'}}",
        "model.num_hidden_layers=3",
        world=worlds(8),
    )
    from onetower.training.config import ConfigError

    with pytest.raises(ConfigError, match="num_hidden_layers.* mismatch: the model has 3"):
        pretrain(bad)


@pytest.mark.parametrize("arch", ["vit_base_patch16_clip_224", "vit_base_patch16_siglip_224"])
def test_clip_and_siglip_vision_towers(arch, tmp_path, caplog) -> None:
    """CLIP's tower (pre-norm, eps 1e-5) and SigLIP's (no CLS token, attention pooling) give
    their token states: the fields come from the backbone, the pooling head is said dropped."""
    save_for_hf(randomise(timm.create_model(arch, pretrained=False, **VIT)), tmp_path)
    vit = load_timm({"timm": f"local-dir:{tmp_path}"})
    fields = config_fields(vit, None)
    siglip = "siglip" in arch
    assert fields["image_cls_token"] is not siglip and fields["image_embed_norm"] is not siglip
    with caplog.at_level("WARNING", logger="onetower.backbones"):
        model = build(vit, **fields)
    assert ("attention-pooling head" in caplog.text) is siglip
    px = inputs()[2]
    with torch.no_grad():
        got = model(pixel_values=px).last_hidden_state
        torch.testing.assert_close(got, vit.forward_features(px), atol=ATOL, rtol=0)
