"""What a saved model folder holds: its onetower class, its run folder, atomic writes.

Shared by the card, the remote-code bundle and the upload, so none of them imports another
for these helpers.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from transformers.models.auto import modeling_auto

from onetower.modeling import OneTowerPreTrainedModel


class ModelFolderError(ValueError):
    """The folder is not a complete onetower model; raised before any network call."""


def find_run_dir(folder: str | Path) -> Path | None:
    """The run folder of a saved model: ``folder`` or its parent, whichever holds config.yaml."""
    folder = Path(folder)
    return next((d for d in (folder, folder.parent) if (d / "config.yaml").is_file()), None)


def read_model_config(folder: str | Path) -> dict:
    """``folder/config.json`` of a onetower model, parsed.

    Raises:
        ModelFolderError: missing, unreadable, or the config of another model type.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ModelFolderError(f"{folder} is not a saved model: config.json is missing")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"{path} is not readable JSON: {e}") from None
    if config.get("model_type") != "onetower":
        raise ModelFolderError(
            f"{folder} holds a {config.get('model_type')!r} model, not a onetower model"
        )
    return config


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def onetower_folder(folder: str | Path, key: str) -> dict:
    """Check that ``folder`` (the value of config key ``key``) is a complete saved onetower
    model, before anything loads it; returns its parsed ``config.json``.

    Raises:
        ModelFolderError: one line naming the key, what was found (nothing, a file, a timm or
            raw PyTorch checkpoint, another transformers model, a half-written folder) and
            what is expected.
    """
    path, expected = (
        Path(folder),
        "expected a folder saved by onetower (e.g. runs/flava_like/final)",
    )

    def fail(found: str) -> ModelFolderError:
        return ModelFolderError(f"{key}={str(folder)!r} {found}: {expected}")

    if not path.exists():
        raise fail("does not exist")
    if not path.is_dir():
        raise fail("is a file, not a model folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        weights = sorted(
            p.name
            for p in path.iterdir()
            if p.suffix in (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
        )
        raise fail(
            f"holds weights ({', '.join(weights[:3])}) but no config.json: a raw PyTorch or timm checkpoint"
            if weights
            else "has no config.json"
        )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise fail(f"has an unreadable config.json ({e})") from None
    if "model_type" not in config and "architecture" in config:  # timm's config.json
        raise fail(f"holds a timm model ({config['architecture']!r})")
    if config.get("model_type") != "onetower":
        names = ", ".join(config.get("architectures") or []) or "no architecture named"
        raise fail(f"holds a {config.get('model_type')!r} model ({names}), not a onetower model")
    if not any((path / w).is_file() for w in WEIGHT_FILES):
        raise fail("is half-written: config.json but no model.safetensors")
    return config


def model_class(folder: str | Path) -> type[OneTowerPreTrainedModel]:
    """The onetower class named by ``folder/config.json``; raises ModelFolderError if the folder
    holds no onetower model config (missing, unreadable, another model type or class)."""
    config = read_model_config(folder)
    classes = {c.__name__: c for c in _subclasses(OneTowerPreTrainedModel)}
    name = (config.get("architectures") or ["OneTowerModel"])[0]
    if name not in classes:
        raise ModelFolderError(
            f"{Path(folder) / 'config.json'} names {name!r}, not a onetower model class"
        )
    return classes[name]


def _subclasses(cls: type) -> list[type]:
    return [s for c in cls.__subclasses__() for s in (c, *_subclasses(c))]


def auto_class_name(cls: type) -> str | None:
    """The transformers Auto class that loads ``cls`` (AutoModel first), if one is registered."""
    autos = [a for a in vars(modeling_auto).values() if isinstance(a, type)]
    for auto in sorted(autos, key=lambda a: a.__name__ != "AutoModel"):
        registered = getattr(getattr(auto, "_model_mapping", None), "_extra_content", {})
        if registered.get(cls.config_class) is cls:
            return auto.__name__
    return None


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, so
    a reader (or a crash) never sees a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        # mkstemp makes the file private (0600); keep the mode of the file it replaces
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
