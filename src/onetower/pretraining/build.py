"""Build a pretraining run's pieces from its config: the encoder, the objective heads and the
per-step masking their views declare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from onetower.backbones import config_fields, init_from_backbones, load_hf_text, load_timm
from onetower.configuration import SIZES, OneTowerConfig
from onetower.data.batch_masking import BatchMasker
from onetower.hub import onetower_folder
from onetower.modeling import OneTowerModel
from onetower.objectives import MASKED_PAIR, MaskedPairView, ObjectiveComposer
from onetower.pretraining.heads_io import HEADS_FILE
from onetower.training.config import ConfigError


def build_model(cfg: DictConfig, tokenizer: Any) -> OneTowerModel:
    """The encoder: ``model.init`` (a saved onetower model) or a new one from ``model.size``
    plus any ``OneTowerConfig`` field, sized to the tokenizer and the data; its image side
    from ``model.init_image`` (a timm ViT) and its text side from ``model.init_text`` (a BERT /
    RoBERTa / XLM-R), see :mod:`onetower.backbones`."""
    fields = OmegaConf.to_container(cfg.model, resolve=True)
    init = fields.pop("init", None)
    fields.pop("init_heads", None)  # read by build_composer
    size = fields.pop("size", None)
    image_spec, text_spec = fields.pop("init_image", None), fields.pop("init_text", None)
    if init and (image_spec or text_spec):
        raise ConfigError(
            "model.init loads a whole saved model: drop model.init_image / model.init_text"
        )
    if init:
        # the saved config decides: a model field may only repeat it (a recipe YAML's fields
        # that differ are cleared with model.<field>=null)
        saved = onetower_folder(init, "model.init")
        asked = {k: v for k, v in fields.items() if v is not None}
        if size:  # the named size's fields that neither the YAML nor the data set
            data_sized = ("vocab_size", "max_text_len", "image_size", "pad_token_id")
            if size not in SIZES:
                raise ConfigError(f"model.size={size!r}: one of {sorted(SIZES)}")
            named = SIZES[size]
            asked = {**{k: v for k, v in named.items() if k not in data_sized}, **asked}
        differ = {k: v for k, v in asked.items() if saved.get(k) != v}
        if differ:
            listed = ", ".join(f"{k} {saved.get(k)!r} (asked {v!r})" for k, v in differ.items())
            raise ConfigError(
                f"model.init={init!r} loads a saved model whose config differs: {listed}; drop "
                f"model.{sorted(differ)}{' and model.size' if size else ''} (or set them to "
                "null on the command line)"
            )
        model = OneTowerModel.from_pretrained(init)
    else:
        defaults = dict(
            vocab_size=len(tokenizer),
            max_text_len=cfg.data.max_text_len,
            image_size=cfg.data.image_size,
            pad_token_id=tokenizer.pad_token_id,
        )
        try:
            image = load_timm(image_spec) if image_spec else None
            text = load_hf_text(text_spec) if text_spec else None
            # the backbones' own sizes over the named size; explicit fields must agree. The
            # named size comes in through from_size, under the data's sizes (data.image_size,
            # data.max_text_len, the tokenizer), never over them.
            chosen = config_fields(image, text)
            config = (
                OneTowerConfig.from_size(size, **{**defaults, **chosen, **fields})
                if size
                else OneTowerConfig(**{**defaults, **chosen, **fields})
            )
            model = init_from_backbones(OneTowerModel(config), image, text)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model: {e}") from None
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
    """The objective heads and their weights, from the ``objectives`` section; with
    ``model.init``, the heads saved in that folder (see :func:`load_init_heads`)."""
    stanzas = OmegaConf.to_container(cfg.objectives, resolve=True)
    try:
        composer = ObjectiveComposer.from_config(model, stanzas, seed=cfg.run.seed)
    except ValueError as e:
        raise ConfigError(f"objectives: {e}") from None
    _check_patch_sampling(model, composer)
    load_init_heads(cfg, composer)
    return composer


def _check_patch_sampling(model: OneTowerModel, composer: ObjectiveComposer) -> None:
    """ViLT's patch sampling chooses the encoded patches itself: no view may also mask (MIM)
    or drop (patch dropout) patches. Checked here, before the run, not at the first step."""
    limit = model.config.max_image_patches
    if limit is None:
        return
    clash = sorted(
        kind
        for kind, spec in composer.plan.items()
        if getattr(spec, "image_masking", None) is not None or getattr(spec, "patch_dropout", None)
    )
    if clash:
        raise ConfigError(
            f"model.max_image_patches={limit} (ViLT's patch sampling) chooses which patches are "
            f"encoded, but the objectives' {clash} view(s) mask or drop patches too (MIM, "
            "patch_dropout): set model.max_image_patches=null or disable those options"
        )


def load_init_heads(cfg: DictConfig, composer: ObjectiveComposer) -> list[str]:
    """Start the enabled heads from ``model.init``'s heads file; returns the heads loaded.

    ``model.init_heads`` (with ``model.init``): ``auto`` (default) loads every enabled head
    from the folder's ``objectives.safetensors`` and is an error naming the heads it lacks;
    ``none`` starts every head random; a list (``[mlm]``) loads those and starts the others
    random. A folder without a heads file starts the heads random only with ``none``.
    """
    init = cfg.model.get("init")
    choice = cfg.model.get("init_heads", "auto")
    if not init:
        if choice not in (None, "auto"):
            raise ConfigError("model.init_heads needs model.init (the folder holding the heads)")
        return []
    if choice == "none":
        return []
    enabled = list(composer.heads)
    wanted = enabled if choice in (None, "auto") else list(choice)
    unknown = sorted(set(wanted) - set(enabled))
    if isinstance(choice, str) and choice not in ("auto", "none") or unknown:
        raise ConfigError(
            f"model.init_heads must be auto, none or a list of enabled objectives {enabled}, "
            f"got {choice!r}"
        )
    path = Path(init) / HEADS_FILE
    if not path.is_file():
        raise ConfigError(
            f"model.init={init} holds no objective heads ({HEADS_FILE} is missing): set "
            "model.init_heads=none to start the heads random"
        )
    saved = load_file(str(path))
    state = composer.heads.state_dict()
    missing = [n for n in wanted if not any(k.startswith(f"{n}.") for k in saved)]
    if missing:
        present = sorted({k.split(".")[0] for k in saved})
        raise ConfigError(
            f"model.init={init} has no saved head for objective(s) {missing} (it holds "
            f"{present}): list the heads to load, e.g. model.init_heads={present}, or disable "
            "the others"
        )
    load: dict[str, torch.Tensor] = {}
    for name in wanted:
        mine = {k for k in state if k.startswith(f"{name}.")}
        theirs = {k for k in saved if k.startswith(f"{name}.")}
        bad = [
            f"{k} saved {tuple(saved[k].shape)}, built {tuple(state[k].shape)}"
            for k in sorted(mine & theirs)
            if saved[k].shape != state[k].shape
        ]
        if mine != theirs or bad:
            raise ConfigError(
                f"model.init={init}: the saved {name!r} head does not fit the one built from "
                f"objectives.{name}: missing {sorted(mine - theirs)[:4]}, unexpected "
                f"{sorted(theirs - mine)[:4]}, other shapes {bad[:2]}"
                + _head_option_hint(name, mine, theirs)
            )
        load.update({k: saved[k] for k in theirs})
    composer.heads.load_state_dict(load, strict=False)
    return wanted


def build_masker(tokenizer: Any, composer: ObjectiveComposer) -> BatchMasker:
    """Per-step masking for the masked pass the heads planned: its text masking ("replace":
    BERT corruption; "drop": M3AE removes the tokens) and image masking; none without one."""
    spec = composer.plan.get(MASKED_PAIR)
    if not isinstance(spec, MaskedPairView):
        return BatchMasker(tokenizer)
    return BatchMasker(
        tokenizer, spec.text_masking, spec.image_masking, drop_text=spec.text_mode == "drop"
    )


def _head_option_hint(name: str, mine: set[str], theirs: set[str]) -> str:
    """The objective option that builds the saved layout, when it is a known one (FLAVA's
    untied MLM decoder, its projection biases)."""
    options = {
        "mlm.decoder": f"objectives.{name}.tied",
        "contrastive.text_proj.bias": f"objectives.{name}.bias",
    }
    for key, option in options.items():
        if key in theirs - mine:
            return f"; the saved head needs {option}={'false' if 'tied' in option else 'true'}"
        if key in mine - theirs:
            return f"; the saved head needs {option}={'true' if 'tied' in option else 'false'}"
    return ""
