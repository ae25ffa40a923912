"""Recipe configs: OmegaConf YAML + ``key=value`` overrides, checked against a schema.

A recipe's schema is a tree of dataclasses (see :mod:`onetower.training.schema`). Sections
whose keys are open by design (``model``: fields of ``OneTowerConfig``; ``objectives``: head
names) are plain dicts validated by their owners, which name unknown keys too.

``--help`` prints :func:`onetower.training.config_help.describe_config`: every key with its
type, default, the value the recipe's YAML sets and its meaning.
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


def _unknown_key(cfg: DictConfig, key: str) -> str | None:
    """The first unknown component of a dotted ``key`` with a suggestion, or None if the key
    exists or lies in an open (dict-typed) section."""
    node: Any = cfg
    for depth, part in enumerate(key.split(".")):
        if not isinstance(node, DictConfig):
            return None
        if OmegaConf.get_type(node) is dict:  # open section: its owner checks the keys
            return None
        if part not in node:
            name = ".".join(key.split(".")[: depth + 1])
            close = difflib.get_close_matches(part, [str(k) for k in node.keys()], 1)
            prefix = name[: -len(part)]
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            return f"unknown config key {name!r}{hint}"
        node = node[part]
    return None


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except (ConfigKeyError, ConfigAttributeError) as e:
        key = e.full_key or str(e)
        raise ConfigError(
            f"{source}: {_unknown_key(base, key) or f'unknown config key {key!r}'}"
        ) from None
    except ValidationError as e:
        raise ConfigError(
            f"{source}: bad value for {e.full_key!r}: {e.msg.splitlines()[0]}"
        ) from None


def load_config(
    schema: type, argv: list[str] | None = None, config_path: str | Path | None = None
) -> DictConfig:
    """Build a recipe config: schema defaults <- YAML file <- command-line overrides.

    Args:
        schema: the recipe's root dataclass.
        argv: command-line words: ``--config PATH`` and ``key=value`` overrides (dotted keys);
            ``-h`` / ``--help`` prints :func:`describe_config` (with that YAML) and exits 0.
        config_path: YAML used when argv names none (the recipe's default).

    Returns:
        A read-only :class:`DictConfig` that still rejects unknown keys.

    Raises:
        ConfigError: unknown key (named, with a suggestion), bad value, malformed override,
            or a missing config file.
        SystemExit: code 0 after ``--help``.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-h", "--help", action="store_true", help="list every config key")
    parser.add_argument("--config", default=None, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4")
    argv = list(argv) if argv is not None else []
    known = parser.parse_known_args(argv)[0]
    if known.help:  # as argparse's own -h: answered before any other word is checked
        from onetower.training.config_help import describe_config  # imports this module

        print(describe_config(schema, known.config or config_path, prog=parser.prog))
        raise SystemExit(0)
    args = parser.parse_args(argv)
    cfg = OmegaConf.structured(schema)
    path = args.config or config_path
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        cfg = _merge(cfg, OmegaConf.load(path), str(path))
    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        if (problem := _unknown_key(cfg, key)) is not None:
            raise ConfigError(f"override: {problem}")
        cfg = _merge(cfg, OmegaConf.from_dotlist([f"{key}={value}"]), "override")
    train = cfg.get("train")
    if train is not None and train.get("mixed_precision") == "False":
        train.mixed_precision = "no"  # `train.mixed_precision=no` (YAML reads `no` as false)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (saved with every run)."""
    Path(path).write_text(OmegaConf.to_yaml(cfg, resolve=True))


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, Any]:
    """``{"train.lr": 1e-4, ...}`` with only scalar values, for trackers' hparams."""
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, Any] = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[name] = v
        else:
            out[name] = str(v)
    return out
