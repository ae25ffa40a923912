"""Hugging Face integration: config, Auto classes, save/load, strict loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel

from onetower import SIZES, OneTowerConfig, OneTowerModel


def test_named_sizes() -> None:
    base = OneTowerConfig.from_size("base")
    assert (base.hidden_size, base.num_hidden_layers, base.num_attention_heads) == (768, 12, 12)
    tiny = OneTowerConfig.from_size("tiny", multiway=True)
    assert tiny.hidden_size <= 64 and tiny.vocab_size <= 512 and tiny.multiway
    assert set(SIZES) >= {"tiny", "base"}
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        OneTowerConfig.from_size("huge")


def test_unknown_and_invalid_config_fields_are_named() -> None:
    with pytest.raises(ValueError, match=r"'hiden_size' \(did you mean 'hidden_size'\?\)"):
        OneTowerConfig(hiden_size=32)
    with pytest.raises(ValueError, match="not divisible by num_attention_heads"):
        OneTowerConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="image_position must be 'learned' or 'sincos'"):
        OneTowerConfig(image_position="rope")
    with pytest.raises(Exception, match="hidden_size"):
        OneTowerConfig(hidden_size="wide")


def test_save_load_round_trip_is_bit_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = OneTowerConfig.from_size(
        "tiny", multiway=True, text_tower_layers=1, use_mask_token=True
    )
    model = OneTowerModel(config).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "onetower"

    ids_like = torch.zeros(1)
    for loaded in (OneTowerModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert type(loaded) is OneTowerModel
        a, b = model.state_dict(), loaded.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        torch.testing.assert_close(
            loaded.text.positions(7, ids_like), model.text.positions(7, ids_like)
        )
        ids = torch.randint(0, 512, (2, 7))
        px = torch.randn(2, 3, 32, 32)
        assert torch.equal(model(input_ids=ids, pixel_values=px).last_hidden_state,
                           loaded.eval()(input_ids=ids, pixel_values=px).last_hidden_state)  # fmt: skip
    assert isinstance(AutoConfig.from_pretrained(tmp_path), OneTowerConfig)


def test_checkpoint_of_another_architecture_is_rejected(tmp_path: Path) -> None:
    from transformers import ViltConfig, ViltModel

    vilt = ViltModel(ViltConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, image_size=32, patch_size=8))  # fmt: skip
    vilt.save_pretrained(tmp_path / "vilt")
    with pytest.raises(
        ValueError, match="this config is for a 'vilt' model.*convert_vilt_to_onetower"
    ):
        OneTowerModel.from_pretrained(tmp_path / "vilt")

    # same model type, different architecture: mis-shaped tensors (transformers' own error) and
    # missing / unexpected weights (ours) are errors, not a silently half-random model
    OneTowerModel(OneTowerConfig.from_size("tiny")).save_pretrained(tmp_path / "tiny")
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        OneTowerModel.from_pretrained(tmp_path / "tiny", hidden_size=32)
    with pytest.raises(ValueError, match="missing_keys: .*encoder.blocks.0.mlp.0"):
        OneTowerModel.from_pretrained(tmp_path / "tiny", multiway=True)
    with pytest.raises(OSError):
        OneTowerModel.from_pretrained(tmp_path / "nothing-here")
