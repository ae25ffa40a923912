"""Import Hugging Face FLAVA weights (``FlavaModel`` / ``FlavaForPreTraining``) into onetower.

onetower's towers + fusion layout is FLAVA's: the text and image encoders become the unimodal
towers (``text_tower`` / ``image_tower``, their final LayerNorm the tower norm, the
``*_to_mm_projection`` the tower's ``to_fusion``), the multimodal encoder the fusion encoder.
The converted config sets what FLAVA differs in:

* ``fusion_cls_token``: FLAVA puts a learned CLS in front of the fused sequence;
* ``segment_embeddings=False``: its fusion encoder adds no modality-type embedding;
* ``tower_fusion_prenorm``: fusion reads the towers' last block output before their norm.

Folds: the text embedding's token-type row 0 (always used) goes into the position table, and
q / k / v become one ``qkv`` Linear. The sequences differ in order only: FLAVA fuses
``[CLS ; image ; text]``, onetower ``[CLS ; text ; image]`` (no position embedding in fusion,
so every state is the same, permuted).

Heads (``FlavaForPreTraining``), written as ``objectives.safetensors`` for ``model.init``:

* ``itm``: ``itm_head.seq_relationship``; the ITM head's own pooler becomes the encoder's
  pooler (FLAVA's pretraining never reads the multimodal pooler), so ITM logits match.
* ``contrastive``: ``text_projection`` / ``image_projection`` (with bias: the recipe's
  ``objectives.contrastive.bias`` must be true) and ``logit_scale``.

* ``mlm``: ``mmm_text_head`` (FLAVA's masked multimodal text head: onetower's MLM reads the
  fused text of the ``masked_pair`` view, as MMM does). Its decoder is untied from the token
  embedding, so the recipe's ``objectives.mlm.tied`` must be false (``mlm.decoder``) unless
  the decoder equals the embedding.

Not imported (the CLI lists them): the unimodal ``mlm_head`` and the image heads ``mim_head`` /
``mmm_image_head`` (they predict FLAVA's DALL-E codebook tokens, onetower's MIM predicts
pixels or its own targets).

Usage: ``python -m onetower.convert_flava SRC_DIR DST_DIR`` (never overwrites ``DST_DIR``).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from onetower.configuration import OneTowerConfig
from onetower.convert_io import pop_key, refuse_existing, save_converted
from onetower.modeling import OneTowerModel

#: what each FLAVA layer's modules are called in onetower's Block
_LAYER = {
    "layernorm_before": "norm1",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


def flava_config_to_onetower(flava_config: Any, **overrides: Any) -> OneTowerConfig:
    """The :class:`OneTowerConfig` that expresses a ``transformers.FlavaConfig`` exactly.

    Raises:
        ValueError: a FLAVA layout onetower cannot express, naming both values (towers and
            fusion must share width, heads, feed-forward width, activation and q/k/v bias).
    """
    t, i, m = flava_config.text_config, flava_config.image_config, flava_config.multimodal_config
    for field in ("hidden_size", "num_attention_heads", "intermediate_size", "qkv_bias"):
        values = {
            "text": getattr(t, field),
            "image": getattr(i, field),
            "multimodal": getattr(m, field),
        }
        if len(set(values.values())) != 1:
            raise ValueError(
                f"FLAVA {field} differs between encoders ({values}); onetower's towers and "
                "fusion share one width / head layout"
            )
    for name, c in (("text", t), ("image", i), ("multimodal", m)):
        if c.hidden_act != "gelu":
            raise ValueError(f"FLAVA {name}_config.hidden_act is {c.hidden_act!r}; only 'gelu'")
    if i.layer_norm_eps != m.layer_norm_eps:
        raise ValueError(
            f"FLAVA image layer_norm_eps {i.layer_norm_eps} != multimodal {m.layer_norm_eps}"
        )
    if not m.use_cls_token:
        raise ValueError("FLAVA multimodal_config.use_cls_token=False is not supported")
    if t.hidden_size != flava_config.hidden_size:
        raise ValueError(
            f"FLAVA hidden_size {flava_config.hidden_size} != encoders' {t.hidden_size}"
        )
    fields = dict(
        hidden_size=m.hidden_size,
        num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads,
        intermediate_size=m.intermediate_size,
        hidden_dropout_prob=float(m.hidden_dropout_prob),
        attention_probs_dropout_prob=float(m.attention_probs_dropout_prob),
        layer_norm_eps=m.layer_norm_eps,
        text_layer_norm_eps=t.layer_norm_eps,
        initializer_range=m.initializer_range,
        qkv_bias=m.qkv_bias,
        segment_embeddings=False,
        fusion_cls_token=True,
        vocab_size=t.vocab_size,
        max_text_len=t.max_position_embeddings,
        pad_token_id=t.pad_token_id,
        text_position="learned",
        text_embed_norm=True,
        image_size=i.image_size,
        patch_size=i.patch_size,
        num_channels=i.num_channels,
        image_cls_token=True,
        image_position="learned",
        image_position_resample="bicubic",
        use_mask_token=bool(i.mask_token),
        text_tower_layers=t.num_hidden_layers,
        image_tower_layers=i.num_hidden_layers,
        tower_fusion_prenorm=True,
    )
    return OneTowerConfig(**{**fields, **overrides})


def convert_flava_state_dict(
    state: dict[str, torch.Tensor], config: OneTowerConfig
) -> dict[str, torch.Tensor]:
    """Rename a ``FlavaModel`` state dict (with or without the ``flava.`` prefix) to ours.

    Raises:
        KeyError: a FLAVA tensor the mapping expects is missing.
    """
    sd = {k.removeprefix("flava."): v for k, v in state.items()}

    def take(key: str) -> torch.Tensor:
        return pop_key(sd, key, "FlavaModel")

    te, ie = "text_model.embeddings.", "image_model.embeddings."
    out: dict[str, torch.Tensor] = {
        "text.word_embeddings.weight": take(te + "word_embeddings.weight"),
        "text.position_embeddings": take(te + "position_embeddings.weight")
        + take(te + "token_type_embeddings.weight")[0],
        "text.norm.weight": take(te + "LayerNorm.weight"),
        "text.norm.bias": take(te + "LayerNorm.bias"),
        "image.cls_token": take(ie + "cls_token"),
        "image.pos_embed": take(ie + "position_embeddings"),
        "image.patch_embed.proj.weight": take(ie + "patch_embeddings.projection.weight"),
        "image.patch_embed.proj.bias": take(ie + "patch_embeddings.projection.bias"),
        "fusion_cls": take("multimodal_model.cls_token"),
    }
    if config.use_mask_token:
        out["image.mask_token"] = take(ie + "mask_token")

    def stack(src: str, dst: str, depth: int) -> None:
        for i in range(depth):
            s, d = f"{src}.encoder.layer.{i}.", f"{dst}.blocks.{i}."
            for kind in ("weight", "bias"):
                for a, b in _LAYER.items():
                    out[f"{d}{b}.{kind}"] = take(f"{s}{a}.{kind}")
                qkv = [f"{s}attention.attention.{n}.{kind}" for n in ("query", "key", "value")]
                if all(k in sd for k in qkv):
                    out[f"{d}attn.qkv.{kind}"] = torch.cat([take(k) for k in qkv], dim=0)
                elif kind == "weight" or config.qkv_bias:
                    raise KeyError(f"FLAVA state dict has no q/k/v {kind} for {src} layer {i}")
        for kind in ("weight", "bias"):
            out[f"{dst}.norm.{kind}"] = take(f"{src}.layernorm.{kind}")

    stack("text_model", "text_tower.encoder", config.text_tower_layers)
    stack("image_model", "image_tower.encoder", config.image_tower_layers)
    stack("multimodal_model", "encoder", config.num_hidden_layers)
    for kind in ("weight", "bias"):
        out[f"text_tower.to_fusion.{kind}"] = take(f"text_to_mm_projection.{kind}")
        out[f"image_tower.to_fusion.{kind}"] = take(f"image_to_mm_projection.{kind}")
        out[f"pooler.dense.{kind}"] = take(f"multimodal_model.pooler.dense.{kind}")
    return out


def _flava_base(flava: Any) -> Any:
    base = getattr(flava, "flava", flava)
    if type(base).__name__ != "FlavaModel":
        raise TypeError(
            f"expected a transformers FlavaModel or FlavaForPreTraining, got {type(flava).__name__}"
        )
    return base


def convert_flava_to_onetower(flava: Any, **config_overrides: Any) -> OneTowerModel:
    """Convert a ``FlavaModel`` (or the model inside a ``FlavaForPreTraining``) to onetower.

    From a ``FlavaForPreTraining`` the pooler is its ITM head's pooler (see the module notes);
    from a ``FlavaModel`` the multimodal pooler.
    """
    base = _flava_base(flava)
    config = flava_config_to_onetower(base.config, **config_overrides)
    model = OneTowerModel(config)
    state = {k: v for k, v in base.state_dict().items() if not k.endswith(("_ids",))}
    # unimodal poolers: FLAVA's forward and losses never read them
    state = {
        k: v
        for k, v in state.items()
        if not k.startswith(("text_model.pooler", "image_model.pooler"))
    }
    converted = convert_flava_state_dict(state, config)
    if type(flava).__name__ == "FlavaForPreTraining":
        for kind in ("weight", "bias"):
            converted[f"pooler.dense.{kind}"] = getattr(flava.itm_head.pooler.dense, kind)
    unused = sorted(
        k
        for k in {k.removeprefix("flava.") for k in state}
        if not k.startswith(
            ("text_model.", "image_model.", "multimodal_model.", "text_to_mm", "image_to_mm")
        )
    )
    known = {
        "text_projection.weight",
        "text_projection.bias",
        "image_projection.weight",
        "image_projection.bias",
        "logit_scale",
    }
    if set(unused) - known:
        raise RuntimeError(f"FLAVA conversion does not know {sorted(set(unused) - known)}")
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"FLAVA conversion left missing={missing} unexpected={unexpected}")
    return model.to(next(base.parameters()).dtype)


#: FLAVA heads onetower has no equivalent for (reported by the CLI, never silently dropped)
NOT_IMPORTED = {
    "mlm_head": "FLAVA's unimodal (text-only) MLM; onetower's mlm takes mmm_text_head",
    "mim_head": "predicts DALL-E codebook tokens; onetower's mim predicts pixels / its targets",
    "mmm_image_head": "predicts DALL-E codebook tokens; onetower's mim predicts pixels / its targets",
}


def convert_flava_heads(flava: Any) -> dict[str, torch.Tensor]:
    """The heads a FLAVA model carries, keyed as onetower's heads file: ``contrastive.*``
    (every FLAVA model has the projections and temperature) and, from a
    ``FlavaForPreTraining``, ``itm.*`` and ``mlm.*`` (``mlm.decoder`` when untied)."""
    base = _flava_base(flava)
    heads = {
        "contrastive.text_proj.weight": base.text_projection.weight,
        "contrastive.text_proj.bias": base.text_projection.bias,
        "contrastive.image_proj.weight": base.image_projection.weight,
        "contrastive.image_proj.bias": base.image_projection.bias,
        "contrastive.logit_scale": base.logit_scale.reshape(()),
    }
    if type(flava).__name__ == "FlavaForPreTraining":
        head = flava.itm_head.seq_relationship
        heads["itm.classifier.weight"] = head.weight
        heads["itm.classifier.bias"] = head.bias
        mmm = flava.mmm_text_head
        if flava.config.text_config.hidden_act != "gelu":
            raise ValueError("only FLAVA MLM heads with hidden_act='gelu' can be converted")
        t = mmm.transform
        heads.update(
            {
                "mlm.transform.dense.weight": t.dense.weight,
                "mlm.transform.dense.bias": t.dense.bias,
                "mlm.transform.norm.weight": t.LayerNorm.weight,
                "mlm.transform.norm.bias": t.LayerNorm.bias,
                "mlm.bias": mmm.decoder.bias,
            }
        )
        embedding = base.text_model.embeddings.word_embeddings.weight
        if not torch.equal(mmm.decoder.weight, embedding):
            heads["mlm.decoder"] = mmm.decoder.weight
    return {k: v.detach() for k, v in heads.items()}


def main(argv: list[str] | None = None) -> None:
    """CLI: convert a local FLAVA checkpoint folder into a onetower checkpoint folder."""
    import transformers

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="folder (or Hub id, when online) of a transformers FLAVA checkpoint")
    p.add_argument("dst", help="output folder for the onetower checkpoint (must not exist)")
    args = p.parse_args(argv)
    refuse_existing(args.dst)
    src_config = transformers.AutoConfig.from_pretrained(args.src)
    if src_config.model_type != "flava":
        raise SystemExit(
            f"{args.src} holds a {src_config.model_type!r} model, not FLAVA: nothing written"
        )
    arch = (src_config.architectures or ["FlavaModel"])[0]
    cls = (
        transformers.FlavaForPreTraining
        if arch == "FlavaForPreTraining"
        else transformers.FlavaModel
    )
    flava = cls.from_pretrained(args.src)
    model = convert_flava_to_onetower(flava)
    heads = convert_flava_heads(flava)
    save_converted(model, args.dst, heads)
    print(f"wrote {args.dst} with heads {sorted({k.split('.')[0] for k in heads})}")
    if cls is transformers.FlavaForPreTraining:
        for name, why in NOT_IMPORTED.items():
            print(f"not imported: {name} ({why})")


if __name__ == "__main__":
    main()
