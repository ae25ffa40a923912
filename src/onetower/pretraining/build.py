"""Build a pretraining run's pieces from its config: the encoder, the objective heads and the
per-step masking their views declare."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from onetower.configuration import OneTowerConfig
from onetower.data.batch_masking import BatchMasker
from onetower.hub import onetower_folder
from onetower.modeling import OneTowerModel
from onetower.objectives import MASKED_PAIR, MaskedPairView, ObjectiveComposer
from onetower.training.config import ConfigError


def build_model(cfg: DictConfig, tokenizer: Any) -> OneTowerModel:
    """The encoder: ``model.init`` (a saved onetower model) or a new one from ``model.size``
    plus any ``OneTowerConfig`` field, sized to the tokenizer and the data."""
    fields = OmegaConf.to_container(cfg.model, resolve=True)
    init = fields.pop("init", None)
    size = fields.pop("size", None)
    if init:
        if fields or size:
            raise ConfigError(
                f"model.init={init!r} loads a saved model: drop model.{sorted(fields) or ['size']}"
            )
        onetower_folder(init, "model.init")
        model = OneTowerModel.from_pretrained(init)
    else:
        defaults = dict(
            vocab_size=len(tokenizer),
            max_text_len=cfg.data.max_text_len,
            image_size=cfg.data.image_size,
            pad_token_id=tokenizer.pad_token_id,
        )
        try:
            config = (
                OneTowerConfig.from_size(size, **{**defaults, **fields})
                if size
                else OneTowerConfig(**{**defaults, **fields})
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model: {e}") from None
        model = OneTowerModel(config)
    c = model.config
    if len(tokenizer) > c.vocab_size:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {c.vocab_size}"
        )
    if cfg.data.max_text_len > c.max_text_len:
        raise ConfigError(
            f"data.max_text_len {cfg.data.max_text_len} > the model's max_text_len {c.max_text_len}"
        )
    if cfg.train.activation_checkpointing:
        model.activation_checkpointing_enable()
    return model


def build_composer(cfg: DictConfig, model: OneTowerModel) -> ObjectiveComposer:
    """The objective heads and their weights, from the ``objectives`` section."""
    stanzas = OmegaConf.to_container(cfg.objectives, resolve=True)
    try:
        return ObjectiveComposer.from_config(model, stanzas, seed=cfg.run.seed)
    except ValueError as e:
        raise ConfigError(f"objectives: {e}") from None


def build_masker(tokenizer: Any, composer: ObjectiveComposer) -> BatchMasker:
    """Per-step masking for the masked pass the heads planned: its text masking ("replace":
    BERT corruption; "drop": M3AE removes the tokens) and image masking; none without one."""
    spec = composer.plan.get(MASKED_PAIR)
    if not isinstance(spec, MaskedPairView):
        return BatchMasker(tokenizer)
    return BatchMasker(
        tokenizer, spec.text_masking, spec.image_masking, drop_text=spec.text_mode == "drop"
    )
