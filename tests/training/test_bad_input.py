"""User errors in a recipe's config, data or output dir are clear errors; nothing is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from onetower.finetuning import FinetuneConfig
from onetower.pretraining import PretrainConfig, pretrain
from onetower.training import ConfigError, load_config

from ..conftest import CONFIGS, debug_config


def test_every_config_loads_and_names_its_recipe() -> None:
    files = sorted(CONFIGS.rglob("*.yaml"))
    assert len(files) >= 12
    for path in files:
        if path.stem == "finetune_retrieval":  # its own task class and schema
            from onetower.finetuning.retrieval import FinetuneRetrievalConfig

            cfg = load_config(FinetuneRetrievalConfig, ["--config", str(path)])
            assert cfg.objectives.itm.negatives == "hard", path
        elif path.stem.startswith("finetune_"):
            cfg = load_config(FinetuneConfig, ["--config", str(path)])
            assert cfg.task.name == path.stem.removeprefix("finetune_"), path
        else:
            cfg = load_config(PretrainConfig, ["--config", str(path)])
            assert cfg.objectives, path
        assert cfg.run.recipe == path.stem, path


def test_unknown_keys_are_named_with_a_suggestion() -> None:
    path = str(CONFIGS / "vilt_like.yaml")
    with pytest.raises(
        ConfigError, match=r"unknown config key 'train.lrr' \(did you mean 'train.lr'\?\)"
    ):
        load_config(PretrainConfig, ["--config", path, "train.lrr=1e-3"])
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_config(PretrainConfig, ["--config", path, "trian.lr=1e-3"])
    with pytest.raises(ConfigError, match="bad value for 'train.max_steps'"):
        load_config(PretrainConfig, ["--config", path, "train.max_steps=many"])
    with pytest.raises(ConfigError, match="is not key=value"):
        load_config(PretrainConfig, ["--config", path, "train.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PretrainConfig, ["--config", "nope.yaml"])
    debug_yaml = Path(path).parent / "debug" / "vilt_like.yaml"
    cfg = load_config(PretrainConfig, ["--config", str(debug_yaml), "model.hiden_size=8"])
    assert cfg.model.hiden_size == 8  # open section: checked when the model is built (below)


def test_bad_model_field_objective_and_paths_fail_before_training(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"model: .*'hiden_size' \(did you mean 'hidden_size'\?\)"
    ):
        pretrain(debug_config("vilt_like", tmp_path / "1", "model.hiden_size=8"))
    with pytest.raises(ConfigError, match="unknown objective 'itc'"):
        pretrain(debug_config("vilt_like", tmp_path / "2", "objectives.itc.weight=1.0"))
    with pytest.raises(ConfigError, match="unknown option"):
        pretrain(debug_config("vilt_like", tmp_path / "3", "objectives.itm.negative=hard"))
    with pytest.raises(FileNotFoundError, match="data.pairs: '/no/such/pairs' does not exist"):
        pretrain(debug_config("vilt_like", tmp_path / "4", "data.pairs=/no/such/pairs"))
    with pytest.raises(ValueError, match="data.ratios: unknown source"):
        pretrain(debug_config("vilt_like", tmp_path / "5", "data.ratios.videos=1.0"))


def test_output_dir_of_another_run_is_never_overwritten(tmp_path: Path) -> None:
    precious = tmp_path / "vilt_like"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty and holds no onetower run"):
        pretrain(debug_config("vilt_like", tmp_path))
    assert (precious / "notes.txt").read_text() == "mine" and len(list(precious.iterdir())) == 1

    done = pretrain(debug_config("vilt_like", tmp_path / "x", "train.max_steps=2"))
    weights = (done.final_model / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a 'vilt_like' run.*run.resume=latest"):
        pretrain(debug_config("vilt_like", tmp_path / "x", "train.max_steps=2"))
    other = debug_config("m3ae_like", tmp_path / "y", f"run.output_dir={done.output_dir}")
    with pytest.raises(FileExistsError, match="holds a 'vilt_like' run, not 'm3ae_like'"):
        pretrain(other)
    assert (done.final_model / "model.safetensors").read_bytes() == weights
