"""Start an onetower encoder from published unimodal backbones.

* The image side from a timm Vision Transformer (``init_image``): patch embedding, CLS token,
  position table, blocks and final norm go into the image tower (models with
  ``image_tower_layers``) or into the fusion encoder (single-stream, ViLT's layout). CLIP
  towers bring their pre-norm (``image_embed_norm``); SigLIP towers have no CLS token and their
  attention-pooling head is not imported (a warning names it).
* The text side from a Hugging Face BERT / RoBERTa / XLM-R encoder (``init_text``): the
  embeddings (token, position + the constant token-type row, LayerNorm) always; its layers
  too when the model has a text tower (``text_tower_layers``, post-LN blocks as BERT's).

The segment embeddings start at zero, so image-only and text-only outputs equal the
backbones' own before training. Every structural mismatch (width, heads, depth, patch size,
position table) is an error naming both values.

YAML (pretraining's ``model`` section)::

    model:
      size: base
      init_image: {timm: vit_base_patch16_224.augreg_in21k}      # timm name (downloads)
      # or {timm: local-dir:/ckpt/vit} (a timm save_for_hf folder)
      # or {timm: vit_base_patch16_224, checkpoint: /ckpt/vit.safetensors}
      init_text: {hf: bert-base-uncased}                          # name or local folder
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from onetower.modeling import OneTowerModel

logger = logging.getLogger(__name__)

#: transformers model types whose encoder layout this module reads.
TEXT_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")
#: Those whose position ids start after the padding id (RoBERTa's offset).
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")


class BackboneError(ValueError):
    """A backbone that cannot initialise the model; the message names both values."""


def _check_keys(spec: Mapping[str, Any], allowed: set[str], key: str) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise BackboneError(f"{key}: unknown option(s) {unknown}; expected {sorted(allowed)}")


def load_timm(spec: Mapping[str, Any], key: str = "model.init_image") -> nn.Module:
    """The timm model a ``{timm: NAME | local-dir:PATH, checkpoint: FILE}`` stanza names."""
    import timm
    from timm.models import load_checkpoint

    if not isinstance(spec, Mapping) or "timm" not in spec:
        raise BackboneError(f"{key} must be a mapping with a 'timm' entry, got {spec!r}")
    _check_keys(spec, {"timm", "checkpoint"}, key)
    name, checkpoint = str(spec["timm"]), spec.get("checkpoint")
    try:
        model = timm.create_model(name, pretrained=checkpoint is None, num_classes=0)
        if checkpoint is not None:
            load_checkpoint(model, str(checkpoint), strict=False)
    except Exception as e:  # timm raises many kinds (unknown name, no file, bad state dict)
        raise BackboneError(f"{key}: cannot load timm model {name!r}: {e}") from None
    return model.eval()


def load_hf_text(spec: Mapping[str, Any], key: str = "model.init_text") -> nn.Module:
    """The transformers encoder a ``{hf: NAME | PATH}`` stanza names (BERT / RoBERTa / XLM-R)."""
    from transformers import AutoConfig, AutoModel

    if not isinstance(spec, Mapping) or "hf" not in spec:
        raise BackboneError(f"{key} must be a mapping with an 'hf' entry, got {spec!r}")
    _check_keys(spec, {"hf"}, key)
    try:
        config = AutoConfig.from_pretrained(spec["hf"])
    except Exception as e:
        raise BackboneError(f"{key}: cannot read {spec['hf']!r}: {e}") from None
    if config.model_type not in TEXT_MODEL_TYPES:
        raise BackboneError(
            f"{key}: {spec['hf']!r} is a {config.model_type!r} model; text backbones are "
            f"{list(TEXT_MODEL_TYPES)}"
        )
    return AutoModel.from_pretrained(spec["hf"], add_pooling_layer=False).eval()


def config_fields(image: nn.Module | None, text: nn.Module | None) -> dict[str, Any]:
    """The config fields the backbones decide (sizes, eps, layouts); user fields may repeat
    them but a different value is an error at :func:`init_from_backbones`."""
    out: dict[str, Any] = {}
    if image is not None:
        b = image.blocks[0]
        out.update(
            hidden_size=image.embed_dim,
            num_attention_heads=b.attn.num_heads,
            intermediate_size=b.mlp.fc1.out_features,
            patch_size=image.patch_embed.patch_size[0],
            layer_norm_eps=b.norm1.eps,
            image_cls_token=image.cls_token is not None,
            image_embed_norm=isinstance(image.norm_pre, nn.LayerNorm),
            qkv_bias=b.attn.qkv.bias is not None,
        )
    if text is not None:
        c = text.config
        out.setdefault("hidden_size", c.hidden_size)
        out.setdefault("num_attention_heads", c.num_attention_heads)
        out.setdefault("intermediate_size", c.intermediate_size)
        out.update(
            vocab_size=c.vocab_size,
            text_embed_norm=True,
            text_tower_post_norm=True,
            text_layer_norm_eps=c.layer_norm_eps,
        )
    return out


def _same(what: str, ours: Any, theirs: Any, source: str) -> None:
    if ours != theirs:
        raise BackboneError(f"{what} mismatch: the model has {ours}, {source} has {theirs}")


def timm_state(model: OneTowerModel, vit: nn.Module) -> dict[str, torch.Tensor]:
    """Our state-dict entries for a timm ViT (checked against ``model``'s config)."""
    from timm.models.vision_transformer import VisionTransformer

    c, src = model.config, f"timm {getattr(vit, 'default_cfg', {}).get('architecture', 'ViT')}"
    if not isinstance(vit, VisionTransformer):
        raise BackboneError(
            f"model.init_image: expected a timm VisionTransformer, got {type(vit).__name__}"
        )
    tower = model.image_tower is not None
    depth = c.image_tower_layers if tower else c.num_hidden_layers
    b = vit.blocks[0]
    _same("width (hidden_size)", c.hidden_size, vit.embed_dim, src)
    _same("attention heads", c.num_attention_heads, b.attn.num_heads, src)
    _same(
        "feed-forward width (intermediate_size)", c.intermediate_size, b.mlp.fc1.out_features, src
    )
    _same(
        "image_tower_layers" if tower else "depth (num_hidden_layers)", depth, len(vit.blocks), src
    )
    _same("patch_size", c.patch_size, vit.patch_embed.patch_size[0], src)
    _same("position table (image_size)", c.image_size, vit.patch_embed.img_size[0], src)
    _same("image_cls_token", c.image_cls_token, vit.cls_token is not None, src)
    _same("image_embed_norm", c.image_embed_norm, isinstance(vit.norm_pre, nn.LayerNorm), src)
    if c.image_position != "learned":
        raise BackboneError(
            f"image_position mismatch: the model has {c.image_position!r}, {src} learned"
        )
    act = b.mlp.act
    if not (isinstance(act, nn.GELU) and act.approximate == "none"):
        raise BackboneError(f"activation mismatch: the model uses exact GELU, {src} {act}")
    pool = getattr(vit, "global_pool", "token")
    if pool not in ("token", "", "avg", "map"):
        raise BackboneError(f"{src} pools with {pool!r}; onetower reads tokens only")
    _same("layer_norm_eps", c.layer_norm_eps, b.norm1.eps, src)
    sd = {k: v for k, v in vit.state_dict().items() if not k.startswith("head.")}
    # SigLIP's attention-pooling head (global_pool="map") pools the tokens onetower reads
    # itself: it is not imported, and said so
    pooling = sorted(k for k in sd if k.startswith("attn_pool."))
    if pooling:
        for k in pooling:
            del sd[k]
        logger.warning(
            "model.init_image: %s's attention-pooling head (%d tensors, attn_pool.*) is not "
            "imported: onetower's heads read the tokens",
            src,
            len(pooling),
        )
    pos = sd.pop("pos_embed")
    if vit.cls_token is not None and vit.no_embed_class:  # the CLS row gets no position
        pos = torch.cat([pos.new_zeros(1, 1, pos.shape[-1]), pos], dim=1)
    out = {"image.pos_embed": pos}
    for k in ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token"):
        if k in sd:
            out[f"image.{k}"] = sd.pop(k)
    for k in ("weight", "bias"):
        if f"norm_pre.{k}" in sd:
            out[f"image.norm.{k}"] = sd.pop(f"norm_pre.{k}")
    stack = "image_tower.encoder" if tower else "encoder"
    for k in list(sd):
        if k.startswith("blocks.") or k.startswith("norm."):
            out[f"{stack}.{k}"] = sd.pop(k)
    if sd:
        raise BackboneError(f"{src} has parameters onetower cannot hold: {sorted(sd)[:6]}")
    return out


def bert_state(model: OneTowerModel, bert: nn.Module) -> dict[str, torch.Tensor]:
    """Our state-dict entries for a BERT / RoBERTa / XLM-R encoder."""
    c, bc = model.config, bert.config
    src = f"{bc.model_type} {getattr(bc, '_name_or_path', '') or ''}".strip()
    if bc.hidden_act != "gelu":
        raise BackboneError(
            f"activation mismatch: the model uses exact GELU, {src} {bc.hidden_act}"
        )
    if getattr(bc, "position_embedding_type", "absolute") != "absolute":
        raise BackboneError(f"{src} uses {bc.position_embedding_type} positions; onetower absolute")
    _same("width (hidden_size)", c.hidden_size, bc.hidden_size, src)
    _same("vocab_size", c.vocab_size, bc.vocab_size, src)
    _same("text_embed_norm", c.text_embed_norm, True, src)
    if c.text_position != "learned":
        raise BackboneError(
            f"text_position mismatch: the model has {c.text_position!r}, {src} learned"
        )
    offset = bc.pad_token_id + 1 if bc.model_type in _OFFSET_POSITIONS else 0
    if c.max_text_len > bc.max_position_embeddings - offset:
        raise BackboneError(
            f"position table mismatch: the model has max_text_len {c.max_text_len}, {src} "
            f"{bc.max_position_embeddings - offset} positions"
        )
    eps = c.layer_norm_eps if c.text_layer_norm_eps is None else c.text_layer_norm_eps
    _same("text_layer_norm_eps", eps, bc.layer_norm_eps, src)
    sd = bert.state_dict()
    e = "embeddings."
    out = {
        "text.word_embeddings.weight": sd[e + "word_embeddings.weight"],
        "text.position_embeddings": sd[e + "position_embeddings.weight"][
            offset : offset + c.max_text_len
        ]
        + sd[e + "token_type_embeddings.weight"][0],
        "text.norm.weight": sd[e + "LayerNorm.weight"],
        "text.norm.bias": sd[e + "LayerNorm.bias"],
    }
    if model.text_tower is None:  # single-stream: the embeddings only (ViLT)
        return out
    _same("text_tower_layers", c.text_tower_layers, bc.num_hidden_layers, src)
    _same("attention heads", c.num_attention_heads, bc.num_attention_heads, src)
    _same("feed-forward width (intermediate_size)", c.intermediate_size, bc.intermediate_size, src)
    _same("text_tower_post_norm", c.text_tower_post_norm, True, src)
    names = {
        "attention.output.dense": "attn.proj",
        "attention.output.LayerNorm": "norm1",
        "intermediate.dense": "mlp.fc1",
        "output.dense": "mlp.fc2",
        "output.LayerNorm": "norm2",
    }
    for i in range(bc.num_hidden_layers):
        s, d = f"encoder.layer.{i}.", f"text_tower.encoder.blocks.{i}."
        for kind in ("weight", "bias"):
            for a, b in names.items():
                out[f"{d}{b}.{kind}"] = sd[f"{s}{a}.{kind}"]
            qkv = [sd[f"{s}attention.self.{n}.{kind}"] for n in ("query", "key", "value")]
            out[f"{d}attn.qkv.{kind}"] = torch.cat(qkv, dim=0)
    return out


@torch.no_grad()
def init_from_backbones(
    model: OneTowerModel, image: nn.Module | None = None, text: nn.Module | None = None
) -> OneTowerModel:
    """Copy a timm ViT (``image``) and / or a BERT-family encoder (``text``) into ``model``
    in place; the segment embeddings are zeroed. Returns ``model``."""
    state: dict[str, torch.Tensor] = {}
    if image is not None:
        state.update(timm_state(model, image))
    if text is not None:
        state.update(bert_state(model, text))
    ours = model.state_dict()
    for k, v in state.items():
        if k not in ours:
            raise BackboneError(f"the model has no {k!r} to initialise (layout mismatch)")
        if ours[k].shape != v.shape:
            raise BackboneError(
                f"{k}: shape mismatch: the model has {tuple(ours[k].shape)}, the backbone "
                f"{tuple(v.shape)}"
            )
        ours[k].copy_(v)
    if state and model.segment_embeddings is not None:
        model.segment_embeddings.weight.zero_()
    return model
