"""``OneTowerPreTrainedModel``: what every onetower model shares (weight init, activation
checkpointing, strict loading, the transformers plumbing); ``OneTowerModel`` and the task
models subclass it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from onetower.configuration import OneTowerConfig
from onetower.unimodal import ImageEmbedder, TextEmbedder


class OneTowerPreTrainedModel(PreTrainedModel):
    """Weight init, Auto-class plumbing and strict loading shared by every onetower model."""

    config_class = OneTowerConfig
    base_model_prefix = "onetower"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["Block"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if getattr(module, "fusion_cls", None) is not None:
            init.trunc_normal_(module.fusion_cls, std=std)
        if isinstance(module, ImageEmbedder):
            for p in (module.cls_token, module.pos_embed):
                if p is not None:
                    init.trunc_normal_(p, std=std)
            if module.mask_token is not None:
                init.trunc_normal_(module.mask_token, std=std)
        elif isinstance(module, TextEmbedder) and isinstance(
            module.position_embeddings, nn.Parameter
        ):
            init.normal_(module.position_embeddings, std=std)

    def activation_checkpointing_enable(self, *args: Any, **kwargs: Any) -> None:
        """Recompute each transformer block in the backward pass instead of keeping its
        activations (``train.activation_checkpointing=true``): less memory, about one more
        forward's time. Gradients are unchanged.

        Defined here rather than inherited: transformers 5.17 has no method of this name (later
        5.x add it and deprecate ``gradient_checkpointing_enable``), and onetower's blocks checkpoint
        themselves with non-reentrant ``torch.utils.checkpoint``, so no hook is needed. Extra
        arguments (transformers' ``activation_checkpointing_kwargs``) are accepted and ignored.
        """
        self._set_activation_checkpointing(True)

    def activation_checkpointing_disable(self) -> None:
        """Undo :meth:`activation_checkpointing_enable`."""
        self._set_activation_checkpointing(False)

    def gradient_checkpointing_enable(self, *args: Any, **kwargs: Any) -> None:
        """The older name (transformers' Trainer calls it)."""
        self._set_activation_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        """The older name of :meth:`activation_checkpointing_disable`."""
        self._set_activation_checkpointing(False)

    def _set_activation_checkpointing(self, enable: bool) -> None:
        found = False
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = enable
                found = True
        if not found:
            raise ValueError(f"{type(self).__name__} has no block that supports checkpointing")

    @property
    def is_activation_checkpointing(self) -> bool:
        """Whether any block recomputes its activations in the backward pass."""
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    @classmethod
    def from_pretrained(cls, *args: Any, strict: bool = True, **kwargs: Any):  # type: ignore[override]
        """``PreTrainedModel.from_pretrained``, but a checkpoint whose weights do not fit this
        architecture (missing, unexpected or mis-shaped tensors) is an error naming them, not a
        silently half-random model. Pass ``strict=False`` to get transformers' warning instead
        (e.g. loading a base checkpoint into a task model whose new head starts random).
        """
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        if strict:
            problems = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
            if problems:
                detail = "; ".join(
                    f"{k}: {', '.join(map(str, v[:8]))}" + (" ..." if len(v) > 8 else "")
                    for k, v in problems.items()
                )
                raise ValueError(
                    f"checkpoint {args[0] if args else kwargs.get('pretrained_model_name_or_path')!s} "
                    f"does not match {cls.__name__} ({detail}); pass strict=False to load it anyway"
                )
        return (model, info) if want_info else model
