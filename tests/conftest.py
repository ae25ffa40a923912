"""Helpers for in-process recipe runs at toy scale."""

from __future__ import annotations

from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CONFIGS = RECIPES / "configs"


def debug_config(recipe: str, tmp_path: Path, *overrides: str, world: Path | None = None):
    """The recipe's debug config with its output (and synthetic world) under tmp."""
    from onetower.pretraining import PretrainConfig
    from onetower.training import load_config

    world = world or tmp_path / "world"
    argv = [
        "--config",
        str(CONFIGS / "debug" / f"{recipe}.yaml"),
        f"run.output_dir={tmp_path / recipe}",
        f"data.synthetic.root={world}",
        *overrides,
    ]
    return load_config(PretrainConfig, argv)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each run builds its own Accelerator; accelerate keeps a process-wide singleton."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(scope="session")
def worlds(tmp_path_factory):
    """``worlds(n_train)``: a toy synthetic world folder per training-set size, shared by the
    tests that use that size (written on first use; a world folder is bound to its spec)."""
    root = tmp_path_factory.mktemp("worlds")
    return lambda n_train: root / f"world_{n_train}"


def save_world_tokenizer(cfg, folder: Path) -> None:
    """Save the tokenizer of ``cfg``'s synthetic world into a converted model's ``folder``, as a
    converter saves its source's tokenizer, so a run with ``model.init=folder`` continues with
    it (a converted random model has no tokenizer of its own)."""
    from accelerate import PartialState
    from omegaconf import OmegaConf

    from onetower.data import load_tokenizer
    from onetower.pretraining.data import resolve_sources

    plain = OmegaConf.merge(cfg, {"model": {"init": None}})
    paths, _ = resolve_sources(plain, PartialState())
    load_tokenizer(paths["tokenizer"]).save_pretrained(str(folder))
