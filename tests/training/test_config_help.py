"""``--help`` of a recipe: every config key with its type, default, YAML value and meaning.

No ``from __future__ import annotations`` here: the toy schema's types are objects, the real
schema's are strings; both are shown as written.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from onetower.training.config import ConfigError, load_config
from onetower.training.config_help import describe_config, field_comments

FLAVA_YAML = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "flava_like.yaml"


@dataclass
class ToyData:
    n_train: int = 100  #: training examples
    #: where the data lives; a "#: hash" in a string is no comment
    root: str = "data/#1"
    tag: str = "x #: not a comment"  # a plain comment, not a meaning


@dataclass
class ToyConfig:
    #: peak learning rate, reached after warm-up;
    #: a comment block of two lines
    lr: float = 0.001
    steps: int = 10  #: optimizer steps
    resume: str | None = None  #: null | latest | a checkpoint folder
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  #: Adam's betas
    model: dict[str, Any] = field(default_factory=lambda: {"size": "tiny"})  #: model options
    data: ToyData = field(default_factory=ToyData)  #: where examples come from
    wrapped: int = 3  #: a comment inside a wrapped default

    #: this block is cut off from its field by the blank line below

    undocumented: bool = False
    helped: int = field(default=4, metadata={"help": "from the field's metadata"})


MEANINGS = {
    "lr": "peak learning rate, reached after warm-up; a comment block of two lines",
    "steps": "optimizer steps",
    "resume": "null | latest | a checkpoint folder",
    "betas": "Adam's betas",
    "model": "model options",
    "data": "where examples come from",
    "data.n_train": "training examples",
    "data.root": 'where the data lives; a "#: hash" in a string is no comment',
    "wrapped": "a comment inside a wrapped default",
    "helped": "from the field's metadata",
}
DEFAULTS = {
    "lr": "0.001",
    "steps": "10",
    "resume": "null",
    "betas": "[0.9, 0.98]",
    "model.size": "tiny",
    "data.n_train": "100",
    "data.root": "data/#1",
    "data.tag": '"x #: not a comment"',
    "wrapped": "3",
    "undocumented": "false",
    "helped": "4",
}


def entry(text: str, key: str) -> str:
    """A key's line (or ``[section]`` head) and the indented lines under it, whitespace-joined."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"\s*\[?{re.escape(key)}(\]|\s|$)", line):
            block = [line]
            for more in lines[i + 1 :]:
                if not more.startswith("      "):
                    break
                block.append(more)
            return " ".join(" ".join(block).split())
    raise AssertionError(f"{key!r} has no line in:\n{text}")


def test_field_comments_read_with_tokenize():
    assert field_comments(ToyData) == {
        "n_train": "training examples",
        "root": MEANINGS["data.root"],
    }
    comments = field_comments(ToyConfig)
    assert {k: comments.get(k) for k in MEANINGS if "." not in k} == {
        k: v for k, v in MEANINGS.items() if "." not in k
    }
    assert "undocumented" not in comments  # a blank line parts a block from the field


def test_describe_lists_every_key_with_type_default_and_meaning(tmp_path):
    text = describe_config(ToyConfig, width=100)
    assert text.startswith("usage: ") and "[--config FILE] [key=value ...]" in text
    for key, default in DEFAULTS.items():
        assert f"= {default}" in entry(text, key), key
    for key, meaning in MEANINGS.items():
        assert meaning in entry(text, key), key
    assert "str | None" in entry(text, "resume") and "list[float]" in entry(text, "betas")
    assert "open section" in entry(text, "model") and "{size: tiny}" in entry(text, "model")
    assert entry(text, "data").startswith("[data] ToyData")
    assert "(from " not in text  # no YAML, no YAML values


def test_describe_shows_what_the_yaml_sets(tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text("steps: 25\nmodel: {depth: 2}\n")
    text = describe_config(ToyConfig, config, width=100)
    assert "= 25 (from toy.yaml; schema default: 10)" in entry(text, "steps")
    assert "optimizer steps" in entry(text, "steps")
    assert "= 2 (from toy.yaml)" in entry(text, "model.depth")
    assert entry(text, "model.size").endswith("= tiny")  # the YAML adds to an open section
    assert entry(text, "lr").endswith(MEANINGS["lr"])  # untouched keys keep their default
    assert "lacks" not in text
    config.write_text("steps: 25\nstpes: 3\n")
    assert "toy.yaml also sets keys the schema lacks (loading it fails on them): stpes" in (
        " ".join(describe_config(ToyConfig, config).split())
    )
    with pytest.raises(ConfigError, match="does not exist"):
        describe_config(ToyConfig, tmp_path / "missing.yaml")


def test_help_prints_the_description_and_exits_0(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_config(ToyConfig, ["--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == describe_config(ToyConfig) + "\n"

    config, other = tmp_path / "toy.yaml", tmp_path / "other.yaml"
    config.write_text("steps: 25\n")
    other.write_text("lr: 0.5\n")
    with pytest.raises(SystemExit) as exit_:  # the recipe's default YAML
        load_config(ToyConfig, ["-h", "steps=7"], config)
    assert exit_.value.code == 0
    assert capsys.readouterr().out == describe_config(ToyConfig, config) + "\n"
    with pytest.raises(SystemExit) as exit_:  # --config replaces it, before or after --help
        load_config(ToyConfig, ["--help", "--config", str(other)], config)
    assert exit_.value.code == 0
    assert capsys.readouterr().out == describe_config(ToyConfig, other) + "\n"
    assert load_config(ToyConfig, ["steps=7"], config).steps == 7  # no --help: as before


def leaf_keys(tree: Any, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict) or not tree:
        return [prefix.rstrip(".")]
    return [k for key, v in tree.items() for k in leaf_keys(v, f"{prefix}{key}.")]


def test_every_key_of_the_pretraining_schema_has_its_line():
    from onetower.pretraining import PretrainConfig

    text = describe_config(PretrainConfig)
    keys = leaf_keys(OmegaConf.to_container(OmegaConf.structured(PretrainConfig)))
    assert len(keys) > 40
    for key in keys:
        entry(text, key)
    assert "optimizer steps" in entry(text, "train.max_steps")
    assert "(accelerate launch would otherwise leave" in entry(text, "run.cpu_threads")
    assert "null = synthetic" in entry(text, "data.pairs")  # `#:` inside the parentheses
    if FLAVA_YAML.is_file():  # with the recipe's YAML: every key it sets, marked
        text = describe_config(PretrainConfig, FLAVA_YAML)
        yaml_keys = leaf_keys(OmegaConf.to_container(OmegaConf.load(FLAVA_YAML)))
        for key in keys + yaml_keys:
            entry(text, key)
        for key in yaml_keys:
            assert "(from flava_like.yaml" in entry(text, key), key
        assert "lacks" not in text
