"""Import Hugging Face ViLT weights into :class:`~onetower.OneTowerModel`.

The mapping (see ``shared/reference/anchors-models.md`` §1.5) is one-to-one except two folds:

* ViLT's text embedding adds a BERT token-type row that is always row 0; that constant vector
  is folded into our text position table (``pos[i] + type[0]``), so no dead parameter remains.
* ViLT keeps separate q / k / v projections; ours is one fused ``qkv`` Linear (q, k, v order).

Usage::

    from transformers import ViltModel
    vilt = ViltModel.from_pretrained("dandelin/vilt-b32-mlm")
    model = convert_vilt_to_onetower(vilt)

or from the command line: ``python -m onetower.convert_vilt SRC_DIR DST_DIR``, which also
writes the MLM head of a ``ViltForMaskedLM`` (or the ITM head of a
``ViltForImageAndTextRetrieval``) as ``objectives.safetensors``, so pretraining continues from
``DST_DIR`` with ``model.init=DST_DIR``.

Variable resolution: pass ViLT's ``pixel_mask`` to the converted model (``pixel_mask=``); each
image gets the position table resampled bilinearly to its own grid, as ViLT does.

Note: ViLT's ``visual_embed`` visits image patches in a random order (``torch.multinomial``);
attention is order-free, so text states and the pooled output match exactly and image-token
states match per patch position (ours stay in grid order).

Patch sampling: a ViLT config with ``max_image_length > 0`` converts to
``max_image_patches``; under the same torch seed the converted model keeps the patches
transformers keeps (listed in grid order, ``EncoderOutput.image_keep_ids``), in eval too.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from onetower.configuration import OneTowerConfig
from onetower.convert_io import pop_key, refuse_existing, save_converted
from onetower.modeling import OneTowerModel
from onetower.task_models import (
    OneTowerForImagesAndTextClassification,
    OneTowerForQuestionAnswering,
)


def vilt_config_to_onetower(vilt_config: Any, **overrides: Any) -> OneTowerConfig:
    """Build the :class:`OneTowerConfig` that expresses a ``transformers.ViltConfig`` exactly."""
    c = vilt_config
    if c.hidden_act != "gelu":
        raise ValueError(
            f"only ViLT models with hidden_act='gelu' can be converted, got {c.hidden_act!r}"
        )

    def single(v: Any) -> int:
        if isinstance(v, (list, tuple)):
            if len(set(v)) != 1:
                raise ValueError(f"only square image/patch sizes are supported, got {v}")
            return int(v[0])
        return int(v)

    if isinstance(c.max_image_length, int) and c.max_image_length == 0:
        raise ValueError("ViLT's max_image_length=0 keeps no image patch: nothing to convert to")
    # ViLT samples patches only for an int > 0 (-1 / None: every patch, shuffled)
    sampled = isinstance(c.max_image_length, int) and c.max_image_length > 0
    fields = dict(
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size,
        hidden_dropout_prob=float(c.hidden_dropout_prob),
        attention_probs_dropout_prob=float(c.attention_probs_dropout_prob),
        layer_norm_eps=c.layer_norm_eps,
        initializer_range=c.initializer_range,
        qkv_bias=c.qkv_bias,
        num_segments=c.modality_type_vocab_size,
        vocab_size=c.vocab_size,
        max_text_len=c.max_position_embeddings,
        pad_token_id=c.pad_token_id,
        text_position="learned",
        text_embed_norm=True,
        image_size=single(c.image_size),
        patch_size=single(c.patch_size),
        num_channels=c.num_channels,
        image_cls_token=True,
        image_position="learned",
        image_position_resample="bilinear",
        multiway=False,
        max_image_patches=c.max_image_length if sampled else None,
    )
    return OneTowerConfig(**{**fields, **overrides})


def convert_vilt_state_dict(
    vilt_state: dict[str, torch.Tensor], num_layers: int
) -> dict[str, torch.Tensor]:
    """Rename a ``ViltModel`` state dict (with or without the ``vilt.`` prefix) to ours.

    Raises:
        KeyError: a ViLT tensor the mapping expects is missing.
    """
    sd = {k.removeprefix("vilt."): v for k, v in vilt_state.items()}
    emb = "embeddings."
    txt = emb + "text_embeddings."

    def take(key: str) -> torch.Tensor:
        return pop_key(sd, key, "ViltModel")

    out: dict[str, torch.Tensor] = {
        "text.word_embeddings.weight": take(txt + "word_embeddings.weight"),
        "text.position_embeddings": take(txt + "position_embeddings.weight")
        + take(txt + "token_type_embeddings.weight")[0],
        "text.norm.weight": take(txt + "LayerNorm.weight"),
        "text.norm.bias": take(txt + "LayerNorm.bias"),
        "image.cls_token": take(emb + "cls_token"),
        "image.pos_embed": take(emb + "position_embeddings"),
        "image.patch_embed.proj.weight": take(emb + "patch_embeddings.projection.weight"),
        "image.patch_embed.proj.bias": take(emb + "patch_embeddings.projection.bias"),
        "segment_embeddings.weight": take(emb + "token_type_embeddings.weight"),
        "encoder.norm.weight": take("layernorm.weight"),
        "encoder.norm.bias": take("layernorm.bias"),
        "pooler.dense.weight": take("pooler.dense.weight"),
        "pooler.dense.bias": take("pooler.dense.bias"),
    }
    names = {
        "layernorm_before": "norm1",
        "attention.output.dense": "attn.proj",
        "layernorm_after": "norm2",
        "intermediate.dense": "mlp.fc1",
        "output.dense": "mlp.fc2",
    }
    for i in range(num_layers):
        src, dst = f"encoder.layer.{i}.", f"encoder.blocks.{i}."
        for kind in ("weight", "bias"):
            for a, b in names.items():
                out[f"{dst}{b}.{kind}"] = take(f"{src}{a}.{kind}")
            qkv = [f"{src}attention.attention.{n}.{kind}" for n in ("query", "key", "value")]
            if all(k in sd for k in qkv):
                out[f"{dst}attn.qkv.{kind}"] = torch.cat([take(k) for k in qkv], dim=0)
            elif kind == "weight":
                raise KeyError(f"ViLT state dict has no q/k/v weights for layer {i}")
    return out


#: ViLT task classes with an onetower equivalent (same head layout: ``classifier.{0,1,3}``).
TASK_CLASSES = {
    "ViltForQuestionAnswering": OneTowerForQuestionAnswering,
    "ViltForImagesAndTextClassification": OneTowerForImagesAndTextClassification,
}


def convert_vilt_to_onetower(
    vilt: Any, encoder_only: bool = False, **config_overrides: Any
) -> OneTowerModel | OneTowerForQuestionAnswering | OneTowerForImagesAndTextClassification:
    """Convert a ``transformers`` ViLT model into the equivalent onetower model.

    ``ViltForQuestionAnswering`` gives :class:`OneTowerForQuestionAnswering` and
    ``ViltForImagesAndTextClassification`` (NLVR2) gives
    :class:`OneTowerForImagesAndTextClassification`, heads and ``id2label`` included, so
    predictions match. ``ViltModel``, any other ``ViltFor*`` model, or ``encoder_only=True``
    gives the :class:`OneTowerModel` encoder (task heads ignored).
    """
    base = getattr(vilt, "vilt", vilt)
    if type(base).__name__ != "ViltModel":
        raise TypeError(f"expected a transformers ViltModel, got {type(vilt).__name__}")
    config = vilt_config_to_onetower(base.config, **config_overrides)
    model = OneTowerModel(config)
    state = {k: v for k, v in base.state_dict().items() if not k.endswith("position_ids")}
    converted = convert_vilt_state_dict(state, config.num_hidden_layers)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"ViLT conversion left missing={missing} unexpected={unexpected}")
    model = model.to(next(base.parameters()).dtype)
    task = TASK_CLASSES.get(type(vilt).__name__)
    if task is None or encoder_only:
        return model
    labels = getattr(vilt.config, "id2label", None) or {
        i: f"LABEL_{i}" for i in range(vilt.config.num_labels)
    }
    if task is OneTowerForImagesAndTextClassification and vilt.config.num_images != 2:
        raise ValueError(
            f"NLVR2 models with num_images=2 are supported, got {vilt.config.num_images}"
        )
    out = task.from_encoder(model, labels)
    out.classifier.load_state_dict(vilt.classifier.state_dict())
    return out.to(model.dtype)


def convert_vilt_heads(vilt: Any) -> dict[str, torch.Tensor]:
    """The pretraining heads a ViLT model carries, keyed as onetower's heads file.

    * ``ViltForMaskedLM``: the MLM head (``mlm.*``): transform and bias; its decoder weight is
      the token embedding (tied), as onetower's MLM head.
    * ``ViltForImageAndTextRetrieval``: the ITM head (``itm.*``). Its one score ``s`` becomes
      the 2-way classifier ``[0, s]``: softmax gives P(match) = sigmoid(s), ViLT's score.

    Any other ViLT model carries no pretraining head: an empty dict.

    Raises:
        ValueError: an MLM decoder that is not tied to the token embedding.
    """
    name = type(vilt).__name__
    if name == "ViltForMaskedLM":
        head = vilt.mlm_score
        embedding = vilt.vilt.embeddings.text_embeddings.word_embeddings.weight
        if not torch.equal(head.decoder.weight, embedding):
            raise ValueError(
                "this ViltForMaskedLM's MLM decoder is not tied to its token embedding; "
                "onetower's MLM head decodes with the token embedding"
            )
        t = head.transform
        return {
            "mlm.transform.dense.weight": t.dense.weight,
            "mlm.transform.dense.bias": t.dense.bias,
            "mlm.transform.norm.weight": t.LayerNorm.weight,
            "mlm.transform.norm.bias": t.LayerNorm.bias,
            "mlm.bias": head.decoder.bias,
        }
    if name == "ViltForImageAndTextRetrieval":
        w, b = vilt.rank_output.weight, vilt.rank_output.bias  # (1, D), (1,)
        return {
            "itm.classifier.weight": torch.cat([torch.zeros_like(w), w], dim=0),
            "itm.classifier.bias": torch.cat([torch.zeros_like(b), b], dim=0),
        }
    return {}


def main(argv: list[str] | None = None) -> None:
    """CLI: convert a local ViLT checkpoint folder into a onetower checkpoint folder."""
    import transformers

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="folder (or Hub id, when online) of a transformers ViLT checkpoint")
    p.add_argument("dst", help="output folder for the onetower checkpoint")
    p.add_argument("--encoder-only", action="store_true", help="drop a VQA / NLVR2 head")
    args = p.parse_args(argv)
    refuse_existing(args.dst)
    # the checkpoint's own class (from config.architectures), so VQA / NLVR2 heads come along
    src_config = transformers.AutoConfig.from_pretrained(args.src)
    if src_config.model_type != "vilt":
        raise SystemExit(
            f"{args.src} holds a {src_config.model_type!r} model, not ViLT: nothing written"
        )
    arch = (src_config.architectures or ["ViltModel"])[0]
    cls = getattr(transformers, arch if arch.startswith("Vilt") else "ViltModel")
    vilt = cls.from_pretrained(args.src)
    model = convert_vilt_to_onetower(vilt, encoder_only=args.encoder_only)
    heads = convert_vilt_heads(vilt)
    save_converted(model, args.dst, heads)
    print(
        f"wrote {args.dst}"
        + (f" with heads {sorted({k.split('.')[0] for k in heads})}" if heads else "")
    )


if __name__ == "__main__":
    main()
