"""``OneTowerConfig``: the configuration of the shared single-stream encoder, with named sizes."""

import difflib
from typing import Any

from huggingface_hub.dataclasses import strict, type_validator
from transformers import AutoConfig, PreTrainedConfig

#: Named sizes. ``tiny`` is the test size; ``base``/``large`` follow ViT-B/L and ViLT-B.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        vocab_size=512,
        max_text_len=16,
        image_size=32,
        patch_size=8,
    ),
    "small": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        image_size=64,
        patch_size=8,
    ),
    "base": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
    ),
    "large": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
    ),
}

#: What a task head reads (see ``OneTowerConfig.classifier_pooling``).
POOLINGS = ("cls", "cls+patches")
#: How a task with several images per example encodes them (``multi_image_method``).
MULTI_IMAGE_METHODS = ("pair", "triplet")

# Keys that transformers itself passes through a config's kwargs (loading, dtype, labels).
_PASSTHROUGH_KWARGS = {
    "torch_dtype",
    "num_labels",
    "name_or_path",
    "_name_or_path",
    "_commit_hash",
    "output_attentions",
    "attn_implementation",
    "experts_implementation",
    "auto_map",
}


@strict
class OneTowerConfig(PreTrainedConfig):
    r"""Configuration of :class:`~onetower.OneTowerModel`.

    Fusion encoder:
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: width D, depth,
        heads and feed-forward width of the shared (fusion) transformer.
        hidden_dropout_prob, attention_probs_dropout_prob, drop_path_rate: regularisation.
        layer_norm_eps: epsilon of every LayerNorm (timm ViT uses 1e-6, HF ViLT 1e-12).
        qkv_bias: bias on the q/k/v projections.
        multiway: BEiT-3 style Multiway blocks (per-modality LayerNorms and FFN, shared attention).
        multiway_attention: per-modality q/k/v and output projections too, only the softmax
            over the joint sequence shared (the released BEiT-3 checkpoints; needs multiway).
        subln: Sub-LN (Magneto, BEiT-3): a LayerNorm before the attention output projection and
            one before the feed-forward output layer in every fusion block.
        num_segments: rows of the segment (modality-type) embedding: 2 = text, image;
            3 adds a second-image segment (NLVR2 pair method).
        segment_embeddings: add the segment embedding to each stream (ViLT); False for
            FLAVA, whose fusion encoder has none.
        fusion_cls_token: a learned token put in front of the fused sequence (FLAVA's
            multimodal CLS); the pooled output then reads it. Fusion passes only.
    Text:
        vocab_size, max_text_len, pad_token_id; text_position ``"learned"`` | ``"sincos"``;
        text_embed_norm: LayerNorm after the text embedding sum (BERT/ViLT).
        text_layer_norm_eps: epsilon of the text embedding and text tower LayerNorms (None =
            ``layer_norm_eps``; a BERT text side next to a timm image side needs both).
    Image:
        image_size, patch_size, num_channels; image_cls_token; image_position ``"learned"`` |
        ``"sincos"``; image_position_resample: how the learned table is resampled to another
        patch grid or to each image of a padded batch (``pixel_mask``): ``"bicubic"`` (timm) or
        ``"bilinear"`` (ViLT, aligned corners); image_embed_norm: LayerNorm after the image
        embedding (CLIP's pre-norm); use_mask_token: learned token for masked patches (BEiT/FLAVA MIM).
        max_image_patches: ViLT's patch sampling (its ``max_image_len``, transformers'
            ``max_image_length``): each image keeps at most this many of its real patches,
            drawn at random with ``torch.multinomial`` on torch's global CPU generator (ViLT's
            draws, so a seed gives transformers' selection); images with fewer keep all of
            them, padded with masked slots. None = every patch. It samples in eval too, as
            ViLT does, so eval is stochastic whenever an image has more real patches than the
            limit: set ``model.config.max_image_patches = None`` (read at each forward) to
            encode every patch, or seed torch before each call. Not combinable with
            ``image_keep_ids`` / ``bool_masked_pos`` (patch dropping, MIM): an error.
    Unimodal towers (FLAVA style; 0 = none):
        text_tower_layers, image_tower_layers: transformer layers run on one modality before
        fusion, followed by a norm and a linear projection into the fusion encoder.
        text_tower_post_norm: the text tower's blocks in BERT's post-LN order (no final norm),
            for a text tower initialised from BERT / RoBERTa / XLM-R.
        tower_fusion_prenorm: project the towers' last block output *before* their final
            norm into fusion (FLAVA does); the unimodal states stay the normed ones.
    Task heads (VQA, NLVR2):
        classifier_pooling: what the classifier reads: ``"cls"`` the pooled output (ViLT);
            ``"cls+patches"`` also the max and the mean over the fused image-patch tokens.
        multi_image_method: how NLVR2's images meet the text: ``"pair"`` (ViLT) encodes the
            text with each image and concatenates the pooled outputs; ``"triplet"`` (UNITER)
            puts the text and every image in one sequence, so attention compares the images.

    Unknown fields are an error that names the field.
    """

    model_type = "onetower"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.0
    layer_norm_eps: float | int = 1e-6
    initializer_range: float | int = 0.02
    qkv_bias: bool = True
    multiway: bool = False
    multiway_attention: bool = False
    subln: bool = False
    num_segments: int = 2
    segment_embeddings: bool = True
    fusion_cls_token: bool = False
    vocab_size: int = 30522
    max_text_len: int = 40
    pad_token_id: int | None = 0
    text_position: str = "learned"
    text_embed_norm: bool = True
    text_layer_norm_eps: float | int | None = None
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    image_cls_token: bool = True
    image_position: str = "learned"
    image_position_resample: str = "bicubic"
    image_embed_norm: bool = False
    use_mask_token: bool = False
    max_image_patches: int | None = None
    text_tower_layers: int = 0
    image_tower_layers: int = 0
    text_tower_post_norm: bool = False
    tower_fusion_prenorm: bool = False
    classifier_pooling: str = "cls"
    multi_image_method: str = "pair"

    def __post_init__(self, **kwargs: Any) -> None:
        model_type = kwargs.pop("model_type", self.model_type)
        if model_type != self.model_type:
            raise ValueError(
                f"this config is for a {model_type!r} model, not {self.model_type!r}"
                + (
                    "; convert ViLT weights with onetower.convert_vilt_to_onetower()"
                    if model_type == "vilt"
                    else ""
                )
            )
        unknown = sorted(set(kwargs) - _PASSTHROUGH_KWARGS)
        if unknown:
            fields = list(self.__dataclass_fields__)
            hints = [
                f"{k!r}"
                + (
                    f" (did you mean {m[0]!r}?)"
                    if (m := difflib.get_close_matches(k, fields, 1))
                    else ""
                )
                for k in unknown
            ]
            raise ValueError(f"unknown OneTowerConfig field(s): {', '.join(hints)}")
        self._check()
        super().__post_init__(**kwargs)

    def _check(self) -> None:
        """Field types, then cross-field checks, as plain TypeError / ValueError."""
        # this module has no `from __future__ import annotations`, so these are real types
        for name, kind in OneTowerConfig.__annotations__.items():
            type_validator(name, getattr(self, name), kind)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        for name, value in (
            ("text_position", self.text_position),
            ("image_position", self.image_position),
        ):
            if value not in ("learned", "sincos"):
                raise ValueError(f"{name} must be 'learned' or 'sincos', got {value!r}")
        if self.image_position_resample not in ("bicubic", "bilinear"):
            raise ValueError(
                "image_position_resample must be 'bicubic' or 'bilinear', got "
                f"{self.image_position_resample!r}"
            )
        if self.max_image_patches is not None and self.max_image_patches <= 0:
            raise ValueError(
                f"max_image_patches must be > 0 (or None: every patch), got {self.max_image_patches}"
            )
        if self.classifier_pooling not in POOLINGS:
            raise ValueError(
                f"classifier_pooling must be one of {POOLINGS}, got {self.classifier_pooling!r}"
            )
        if self.multi_image_method not in MULTI_IMAGE_METHODS:
            raise ValueError(
                f"multi_image_method must be one of {MULTI_IMAGE_METHODS}, "
                f"got {self.multi_image_method!r}"
            )
        if self.multiway_attention and not self.multiway:
            raise ValueError("multiway_attention=True needs multiway=True (Multiway blocks)")
        if self.num_segments < 2:
            raise ValueError(f"num_segments must be >= 2 (text, image), got {self.num_segments}")
        for name in (
            "num_hidden_layers",
            "text_tower_layers",
            "image_tower_layers",
            "max_text_len",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> "OneTowerConfig":
        """A named size (``tiny``, ``small``, ``base``, ``large``) with optional overrides."""
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
        return cls(**{**SIZES[size], **overrides})


AutoConfig.register(OneTowerConfig.model_type, OneTowerConfig)
