"""Hugging Face integration: config, Auto classes, save/load, strict loading, the model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoConfig, AutoModel

from onetower import SIZES, OneTowerConfig, OneTowerForQuestionAnswering, OneTowerModel
from onetower.hub import REAL_LIMITS, model_card, prepare_model_folder, write_model_card

from .conftest import PRETRAIN_RECORD, VQA_RECORD, finite_metrics, make_run


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
        assert torch.equal(
            model(input_ids=ids, pixel_values=px).last_hidden_state,
            loaded.eval()(input_ids=ids, pixel_values=px).last_hidden_state,
        )
    assert isinstance(AutoConfig.from_pretrained(tmp_path), OneTowerConfig)


def test_checkpoint_of_another_architecture_is_rejected(tmp_path: Path) -> None:
    from transformers import ViltConfig, ViltModel

    vilt = ViltModel(
        ViltConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
    )
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


@pytest.mark.parametrize("record", [PRETRAIN_RECORD, VQA_RECORD], ids=["pretraining", "vqa"])
def test_model_card_evaluation_table_shows_the_run_record(tmp_path, tokenizer, record) -> None:
    vqa = record is VQA_RECORD
    extra = {"id2label": {0: "yes", 1: "no"}} if vqa else {}
    model_cls = OneTowerForQuestionAnswering if vqa else OneTowerModel
    final = make_run(tmp_path / "run", tokenizer, model_cls, extra, record=record)
    card = model_card(final, repo_id="me/toy")
    want = finite_metrics(record)
    assert want and all(f"| {k} | {v:.4f} |" in card for k, v in want.items())
    assert "No metrics were recorded" not in card and "eval/bad" not in card  # NaN dropped
    meta = ModelCard(card).data
    assert {r.metric_name: r.metric_value for r in meta.eval_results} == want
    assert meta.pipeline_tag == ("visual-question-answering" if vqa else None)
    assert record["data"]["description"] in card
    assert (record["data"].get("limitations") or REAL_LIMITS) in card


def test_model_card_of_a_real_data_finetune_and_of_a_bare_folder(tmp_path, tokenizer) -> None:
    record = {**VQA_RECORD, "init": "someone/onetower-base"}
    final = make_run(tmp_path / "run", tokenizer, record=record)
    (tmp_path / "run" / "config.yaml").write_text(
        "run:\n  recipe: finetune_vqa\ntask:\n  name: vqa\ndata:\n  root: /data/vqa\n"
    )
    card = model_card(final, repo_id="me/vqa", license="mit")
    meta = ModelCard(card).data
    assert meta.base_model == "someone/onetower-base" and meta.license == "mit"
    assert {"vqa", "finetune_vqa"} <= set(meta.tags) and "synthetic-data" not in meta.tags
    assert {(r.dataset_name, r.dataset_split, r.metric_type) for r in meta.eval_results} == {
        ("/data/vqa", "val2014", "vqa_acc"),
        ("/data/vqa", "val2014", "vqa_acc_yes_no"),
    }
    assert (
        "| val2014/vqa_acc | 93.1000 |" in card and "| val2014/vqa_acc_yes_no | 99.0000 |" in card
    )
    assert "VQA v2 files in /data/vqa." in card and "Sources: `/data/vqa`." in card
    assert "unreadable_image: 2" in card and "2000 steps on 1 process(es)" in card
    assert "training time: 5.0 min, 210 samples/s" in card
    assert REAL_LIMITS in card and "synthetic" not in card.lower()

    bare = tmp_path / "bare"
    shutil.copytree(final, bare)
    card = model_card(bare)
    assert "config.yaml was not found" in card and "No metrics were recorded" in card
    assert "training data was not recorded" in card and REAL_LIMITS in card
    assert ModelCard(card).data.library_name == "onetower"


def test_write_model_card_replaces_the_card_atomically(monkeypatch, tmp_path, tokenizer) -> None:
    final = make_run(tmp_path / "run", tokenizer, prepared=False)
    assert not (final / "README.md").exists()
    path = write_model_card(final, tmp_path / "run")
    assert path == final / "README.md"
    assert path.read_text() == model_card(final, run_dir=tmp_path / "run")
    assert "trust_remote_code" not in path.read_text()  # no bundle in the folder yet
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(VQA_RECORD))
    written = prepare_model_folder(final, tmp_path / "run")
    assert {"README.md", "config.json", "modeling_onetower.py"} <= set(written)
    card = path.read_text()
    assert "| val2014/vqa_acc | 93.1000 |" in card and "trust_remote_code=True" in card
    assert sorted(p.name for p in final.iterdir() if p.name.startswith(".")) == []  # no tmp

    def replace_fails(*args):
        raise OSError("disk full")

    (tmp_path / "run" / "metrics.json").write_text(json.dumps(PRETRAIN_RECORD))
    monkeypatch.setattr("onetower.hub.folder.os.replace", replace_fails)
    with pytest.raises(OSError, match="disk full"):
        write_model_card(final, tmp_path / "run")
    assert path.read_text() == card  # the old card, whole
    assert sorted(p.name for p in final.iterdir() if p.name.startswith(".")) == []
