"""The run lifecycle never loses or strands a user's work: resume means resume, a failed start
leaves the output folder as it was, foreign ``init`` folders get one-line errors, and a
checkpoint of the tied MLM decoder saves and loads without alarms."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onetower import OneTowerModel
from onetower.finetuning import FinetuneConfig, finetune
from onetower.hub import ModelFolderError, onetower_folder
from onetower.pretraining import pretrain
from onetower.pretraining.build import build_composer
from onetower.training import ConfigError, list_checkpoints, load_config
from onetower.training.cli import run_recipe

from ..conftest import CONFIGS, debug_config

SHORT = ("train.max_steps=4", "train.log_every=2", "data.synthetic.n_train=16")


def tree(folder: Path) -> dict[str, float]:
    """Every path under ``folder`` with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in sorted(folder.rglob("*"))}


def test_resume_without_a_checkpoint_is_an_error_that_says_what_is_there(tmp_path, worlds):
    out = tmp_path / "run" / "vilt_like"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    before = tree(out)
    with pytest.raises(FileNotFoundError, match=r"holds no checkpoint.*it holds notes\.txt"):
        pretrain(debug_config("vilt_like", tmp_path / "run", *SHORT, "run.resume=latest"))
    assert tree(out) == before
    with pytest.raises(FileNotFoundError, match="does not exist or is empty"):
        pretrain(debug_config("vilt_like", tmp_path / "none", *SHORT, "run.resume=latest"))
    assert not (tmp_path / "none").exists()


def test_resuming_a_finished_run_does_nothing_unless_max_steps_grows(tmp_path, worlds):
    world = worlds(16)
    done = pretrain(debug_config("vilt_like", tmp_path, *SHORT, world=world))
    assert [c.name for c in list_checkpoints(done.output_dir)] == ["step_4"]  # end of training
    before = tree(done.output_dir)
    again = pretrain(debug_config("vilt_like", tmp_path, *SHORT, "run.resume=latest", world=world))
    assert "already finished at step 4" in again.summary and again.steps == 4
    assert again.metrics == done.metrics and tree(done.output_dir) == before  # nothing written
    more = pretrain(
        debug_config(
            "vilt_like", tmp_path, *SHORT, "run.resume=latest", "train.max_steps=6", world=world
        )
    )
    assert (
        more.steps == 6 and json.loads((more.output_dir / "metrics.json").read_text())["steps"] == 6
    )
    assert [c.name for c in list_checkpoints(more.output_dir)] == ["step_4", "step_6"]


@pytest.mark.parametrize(
    "typo",
    [
        "model.hiden_size=8",
        "objectives.itm.negative=hard",
        "data.pairs=/no/such/pairs",
        "objectives.mlm.probability=2",
        "model.init=/no/such/model",
    ],
)
def test_a_failed_start_leaves_the_folder_as_it_was(typo, tmp_path, worlds):
    world = worlds(16)
    with pytest.raises((ConfigError, FileNotFoundError, ModelFolderError)):
        pretrain(debug_config("vilt_like", tmp_path, *SHORT, typo, world=world))
    assert not (tmp_path / "vilt_like").exists()  # no config.yaml, no run marker
    # the corrected command then runs in the same folder
    assert pretrain(debug_config("vilt_like", tmp_path, *SHORT, world=world)).steps == 4


def foreign_folders(root: Path) -> dict[str, Path]:
    """A BERT, a CLIP, a timm ViT and a half-written onetower folder, as their libraries save
    them (random weights, tiny sizes)."""
    import timm
    from timm.models import save_for_hf
    from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel

    from onetower import OneTowerConfig

    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    folders = {name: root / name for name in ("bert", "clip", "timm", "half")}
    BertModel(BertConfig(vocab_size=100, **small)).save_pretrained(folders["bert"])
    CLIPModel(
        CLIPConfig(text_config=small, vision_config={**small, "image_size": 32, "patch_size": 8})
    ).save_pretrained(folders["clip"])
    save_for_hf(
        timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32), folders["timm"]
    )
    OneTowerConfig.from_size("tiny").save_pretrained(folders["half"])  # config, no weights
    return folders


def test_foreign_init_folders_get_one_line_errors(tmp_path, capsys):
    folders = foreign_folders(tmp_path)
    expected = {
        "bert": r"holds a 'bert' model \(BertModel\), not a onetower model",
        "clip": r"holds a 'clip' model \(CLIPModel\), not a onetower model",
        "timm": r"holds a timm model \('vit_tiny_patch16_224'\)",
        "half": r"is half-written: config.json but no model.safetensors",
    }
    for name, message in expected.items():
        with pytest.raises(
            ModelFolderError,
            match=rf"^init='.*{name}' {message}: expected a folder saved by onetower",
        ):
            onetower_folder(folders[name], "init")
    weights_only = tmp_path / "weights"
    weights_only.mkdir()
    torch.save({"w": torch.zeros(1)}, weights_only / "vit.pth")
    with pytest.raises(ModelFolderError, match=r"holds weights \(vit.pth\) but no config.json"):
        onetower_folder(weights_only, "init")
    # through a recipe: a one-line error and exit status 2, no traceback, nothing written
    capsys.readouterr()  # the folders' own save messages
    out = tmp_path / "ft"
    argv = [
        "--config",
        str(CONFIGS / "debug" / "finetune_vqa.yaml"),
        f"run.output_dir={out}",
        f"init={folders['bert']}",
    ]
    with pytest.raises(SystemExit) as exit_info:
        run_recipe(lambda a: finetune(load_config(FinetuneConfig, a)), argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'bert' model" in err and not out.exists()


def test_checkpoints_keep_the_tied_mlm_decoder_quietly(tmp_path, worlds, caplog, capfd):
    """The MLM decoder is the token embedding: checkpoints store it once, with the encoder
    (nothing alarming in the log), and a resumed run decodes with the loaded embedding."""
    world = worlds(16)
    with caplog.at_level(logging.WARNING):
        run = pretrain(
            debug_config("vilt_like", tmp_path, *SHORT, "train.save_every=2", world=world)
        )
    logged = caplog.text + capfd.readouterr().err
    assert "Removed shared tensor" not in logged and "shared" not in logged.lower()
    state = load_file(list_checkpoints(run.output_dir)[-1] / "model.safetensors")
    assert not [k for k in state if k.startswith("heads.mlm.embedding")]
    cfg = debug_config("vilt_like", tmp_path, *SHORT, world=world)
    composer = build_composer(cfg, OneTowerModel.from_pretrained(run.final_model))
    composer.load_state_dict(state, strict=True)  # every key fits: the tie needs no copy
    mlm = composer.heads["mlm"]
    assert mlm.embedding.weight is composer.model.get_input_embeddings().weight
    torch.testing.assert_close(mlm.embedding.weight, state["model.text.word_embeddings.weight"])


def test_loss_plot_draws_a_heads_chance_level_on_its_own_panel(tmp_path, monkeypatch) -> None:
    from onetower.training import plots

    drawn = {}
    real = plots.pyplot

    def spy():
        plt = real()
        subplots = plt.subplots

        def record(*args, **kwargs):
            fig, axes = subplots(*args, **kwargs)
            drawn["axes"] = axes
            return fig, axes

        monkeypatch.setattr(plt, "subplots", record)
        return plt

    monkeypatch.setattr(plots, "pyplot", spy)
    history = {
        "loss": [(1, 2.0), (2, 1.5)],
        "itm_loss": [(1, 0.69), (2, 0.6)],
        "itm_chance_loss": [(1, 0.693), (2, 0.693)],
        "eval/itm_loss": [(2, 0.65)],
    }
    assert plots.plot_losses(history, tmp_path / "l.png", "t").stat().st_size > 1000
    titles = [ax.get_title() for ax in drawn["axes"].flat if ax.axison]
    assert titles == ["loss", "itm_loss"]  # no panel of its own for the chance level
    itm = next(ax for ax in drawn["axes"].flat if ax.get_title() == "itm_loss")
    assert [t.get_text() for t in itm.get_legend().get_texts()] == ["train", "held-out", "chance"]
