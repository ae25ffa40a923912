"""Continue pretraining from an imported model: the recipe starts from the converted folder
(encoder and heads) and its first-step loss is the source model's loss on the same batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import ViltConfig, ViltForMaskedLM

from onetower.convert_io import save_converted
from onetower.convert_vilt import convert_vilt_heads, convert_vilt_to_onetower
from onetower.data import keys
from onetower.data.batch_masking import step_generator
from onetower.pretraining import pretrain
from onetower.pretraining.task import PretrainTask
from onetower.training.config import ConfigError

from ..conftest import debug_config, save_world_tokenizer


def capture_first_batch(monkeypatch) -> list[dict]:
    """Record each step's masked batch, masked exactly as PretrainTask.step masks it."""
    seen: list[dict] = []
    step = PretrainTask.step

    def recording(self, module, batch, ctx):
        if not seen:
            seen.append(self.masker(batch, step_generator(ctx.seed, ctx.step), ctx.slot, ctx.slots))
        return step(self, module, batch, ctx)

    monkeypatch.setattr(PretrainTask, "step", recording)
    return seen


def converted_vilt(folder: Path) -> ViltForMaskedLM:
    torch.manual_seed(0)
    config = ViltConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        vocab_size=512,
        max_position_embeddings=16,
        image_size=32,
        patch_size=8,
    )
    vilt = ViltForMaskedLM(config).eval()
    with torch.no_grad():
        for p in vilt.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    vilt.tie_weights()
    save_converted(convert_vilt_to_onetower(vilt), folder, convert_vilt_heads(vilt))
    return vilt


def test_vilt_like_continues_from_a_converted_vilt(tmp_path, worlds, monkeypatch) -> None:
    vilt = converted_vilt(tmp_path / "vilt")
    seen = capture_first_batch(monkeypatch)
    cfg = debug_config(
        "vilt_like",
        tmp_path,
        f"model.init={tmp_path / 'vilt'}",
        "model.size=null",
        "objectives.itm.weight=0",  # ViltForMaskedLM has no ITM head
        "train.max_steps=3",
        "train.log_every=1",
        "train.lr=1e-3",
        "data.ratios.texts=0",
        "data.ratios.images=0",
        world=worlds(8),
    )
    save_world_tokenizer(cfg, tmp_path / "vilt")
    result = pretrain(cfg)
    batch = seen[0]
    with torch.no_grad():
        logits = vilt(
            input_ids=batch[keys.MLM_INPUT_IDS],
            attention_mask=batch[keys.ATTENTION_MASK],
            pixel_values=batch[keys.PIXEL_VALUES],
        ).logits
    labels = batch[keys.MLM_LABELS]
    ref = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100).item()
    first = result.history["mlm_loss"][0][1]
    assert first == pytest.approx(ref, abs=1e-5)
    assert len(result.history["loss"]) == 3


def test_missing_head_and_wrong_folder_are_named(tmp_path, worlds) -> None:
    converted_vilt(tmp_path / "vilt")
    cfg = debug_config(
        "vilt_like", tmp_path, f"model.init={tmp_path / 'vilt'}", "model.size=null", world=worlds(8)
    )
    save_world_tokenizer(cfg, tmp_path / "vilt")
    with pytest.raises(ConfigError, match=r"no saved head for objective\(s\) \['itm'\]"):
        pretrain(cfg)
    assert not (tmp_path / "vilt_like").exists()  # nothing claimed


#: the debug flava_like model fields, cleared when the model comes from model.init
CLEAR_MODEL = [
    f"model.{k}=null"
    for k in ("text_tower_layers", "image_tower_layers", "num_hidden_layers", "use_mask_token")
]


def converted_flava(folder: Path):
    from transformers import (
        FlavaConfig,
        FlavaForPreTraining,
        FlavaImageCodebookConfig,
        FlavaImageConfig,
        FlavaMultimodalConfig,
        FlavaTextConfig,
    )

    from onetower.convert_flava import convert_flava_heads, convert_flava_to_onetower

    torch.manual_seed(0)
    common = dict(hidden_size=64, num_attention_heads=2, intermediate_size=128, num_hidden_layers=1)
    config = FlavaConfig(
        text_config=FlavaTextConfig(**common, vocab_size=512, max_position_embeddings=16).to_dict(),
        image_config=FlavaImageConfig(**common, image_size=32, patch_size=8).to_dict(),
        multimodal_config=FlavaMultimodalConfig(**common).to_dict(),
        image_codebook_config=FlavaImageCodebookConfig(hidden_size=8, vocab_size=32).to_dict(),
        hidden_size=64,
        projection_dim=32,
    )
    flava = FlavaForPreTraining(config).eval()
    with torch.no_grad():
        for p in flava.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_converted(convert_flava_to_onetower(flava), folder, convert_flava_heads(flava))
    return flava


def test_flava_like_continues_from_a_converted_flava(tmp_path, worlds, monkeypatch) -> None:
    """MLM (FLAVA's masked multimodal text head) and contrastive first-step losses equal the
    source FlavaForPreTraining's on the same batch. ITM is off (its negatives are drawn at
    random) and MIM too (FLAVA's predicts DALL-E tokens: not imported)."""
    flava = converted_flava(tmp_path / "flava")
    seen = capture_first_batch(monkeypatch)
    cfg = debug_config(
        "flava_like",
        tmp_path,
        f"model.init={tmp_path / 'flava'}",
        "model.size=null",
        "objectives.itm.weight=0",
        "objectives.mim.weight=0",
        "objectives.mlm.tied=false",
        "objectives.contrastive.bias=true",
        "objectives.contrastive.proj_dim=32",
        "train.max_steps=3",
        "train.log_every=1",
        "train.lr=1e-3",
        "data.ratios.texts=0",
        "data.ratios.images=0",
        *CLEAR_MODEL,  # the converted folder's config says these
        world=worlds(8),
    )
    save_world_tokenizer(cfg, tmp_path / "flava")
    result = pretrain(cfg)
    batch = seen[0]
    ids, mask = batch[keys.INPUT_IDS], batch[keys.ATTENTION_MASK]
    pixels = batch[keys.PIXEL_VALUES]
    with torch.no_grad():
        fused = flava.flava(
            input_ids=batch[keys.MLM_INPUT_IDS], attention_mask=mask, pixel_values=pixels
        ).multimodal_embeddings
        logits = flava.mmm_text_head(fused[:, -ids.shape[1] :])
        clean = flava.flava(
            input_ids=ids, attention_mask=mask, pixel_values=pixels, skip_multimodal_encoder=True
        )
        img = F.normalize(flava.flava.image_projection(clean.image_embeddings[:, 0]), dim=-1)
        txt = F.normalize(flava.flava.text_projection(clean.text_embeddings[:, 0]), dim=-1)
    labels = batch[keys.MLM_LABELS]
    mlm = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100).item()
    sim = flava.flava.logit_scale.exp() * img @ txt.t()
    target = torch.arange(sim.shape[0])
    contrastive = ((F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target)) / 2).item()
    assert result.history["mlm_loss"][0][1] == pytest.approx(mlm, abs=1e-5)
    assert result.history["contrastive_loss"][0][1] == pytest.approx(contrastive, abs=1e-5)
    assert len(result.history["loss"]) == 3


def test_flava_heads_need_the_options_they_were_saved_with(tmp_path, worlds) -> None:
    converted_flava(tmp_path / "flava")
    cfg = debug_config(
        "flava_like",
        tmp_path,
        f"model.init={tmp_path / 'flava'}",
        "model.size=null",
        "objectives.itm.weight=0",
        "objectives.mim.weight=0",
        "objectives.contrastive.bias=true",
        "objectives.contrastive.proj_dim=32",
        *CLEAR_MODEL,
        world=worlds(8),
    )
    save_world_tokenizer(cfg, tmp_path / "flava")
    with pytest.raises(ConfigError, match=r"'mlm' head does not fit.*objectives\.mlm\.tied=false"):
        pretrain(cfg)
