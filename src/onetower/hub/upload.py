"""Upload a saved onetower model to the Hugging Face Hub.

:func:`push_to_hub` checks the model folder before any network call, stages an upload copy
(model files, processor, the trust_remote_code bundle, ``README.md``) in a temporary folder so
the user's folder is never written, then creates the repo and commits the staged files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
)
from huggingface_hub.utils import validate_repo_id
from transformers import AutoTokenizer

from onetower.hub.card import model_card
from onetower.hub.folder import ModelFolderError, find_run_dir, model_class
from onetower.hub.remote_code import add_remote_code, has_remote_code
from onetower.modeling import OneTowerPreTrainedModel
from onetower.processing import TOKENIZER_FILES, OneTowerProcessor, missing_processor_files

__all__ = [
    "MODEL_FILES",
    "HubUploadError",
    "ModelFolderError",
    "PushConfig",
    "check_model_folder",
    "push_from_config",
    "push_to_hub",
]

#: Files of a model folder that are uploaded (anything else, e.g. optimizer state, is not):
#: weights, config, tokenizer, processor and the trust_remote_code bundle (remote_code.py).
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer*.json",
    "special_tokens_map.json",
    "vocab.txt",
    "processor_config.json",
    "preprocessor_config.json",
    "chat_template.jinja",
    "configuration_onetower.py",
    "modeling_onetower*.py",
    "onetower_*.py",
)


class HubUploadError(RuntimeError):
    """Creating the repo or committing the files failed; the local folder was not modified."""


@dataclass
class PushConfig:
    """Options of ``recipes/push_to_hub.py`` (``key=value`` on the command line)."""

    checkpoint: str = ""  #: a saved model folder, e.g. runs/vqa/final
    repo_id: str = ""  #: "user/name" or "org/name"
    private: bool = False
    token: str | None = None  #: null = HF_TOKEN or the token saved by `hf auth login`
    revision: str | None = None  #: branch to commit to (created if missing); null = main
    commit_message: str = "Upload onetower model"
    run_dir: str | None = None  #: run folder with config.yaml / metrics.json; null = parent
    license: str = "apache-2.0"
    base_model: str | None = None  #: Hub id of the model this one was fine-tuned from
    datasets: list[str] = field(default_factory=list)  #: Hub ids of the training data


def _can_build_processor(folder: Path, run_dir: Path | None) -> bool:
    has_tokenizer = any((folder / name).is_file() for name in TOKENIZER_FILES)
    return has_tokenizer and run_dir is not None and (run_dir / "config.yaml").is_file()


def check_model_folder(folder: str | Path, run_dir: Path | None = None) -> OneTowerPreTrainedModel:
    """Load ``folder`` strictly (config, class, every weight) and check it has a processor or
    the run config to build one. No network access. Returns the loaded model.

    Raises:
        ModelFolderError: naming the folder and what is missing or wrong.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist")
    cls = model_class(folder)
    if not any(folder.glob("*.safetensors")):
        raise ModelFolderError(f"{folder} has no weights: model.safetensors is missing")
    missing = missing_processor_files(folder)
    if missing and not _can_build_processor(folder, run_dir):
        raise ModelFolderError(
            f"{folder} has no processor: missing {', '.join(missing)}. Save one there with "
            "OneTowerProcessor.save_pretrained, or keep the run's config.yaml beside the "
            "folder (with the tokenizer in it) so the push can rebuild it"
        )
    try:
        return cls.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # any load failure means the upload would be unusable
        raise ModelFolderError(f"{folder} does not load as {cls.__name__}: {e}") from e


def _stage(folder: Path, stage: Path, run_dir: Path | None, card: dict[str, Any]) -> list[str]:
    """Copy the model files into ``stage``, build the processor and the trust_remote_code
    bundle if the folder lacks them, write README.md. Returns the staged file names."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and any(fnmatch(path.name, p) for p in MODEL_FILES):
            shutil.copy2(path, stage / path.name)
    if missing_processor_files(folder):
        # runs saved before the processor existed: rebuild it from the run's data config,
        # the same values the training loop built its eval transform from
        model_cfg = json.loads((folder / "config.json").read_text())
        run_cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        data = run_cfg.get("data") or {}
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        OneTowerProcessor.from_config(
            tokenizer,
            image_size=model_cfg["image_size"],
            max_text_len=model_cfg["max_text_len"],
            mean=data.get("mean", (0.5, 0.5, 0.5)),
            std=data.get("std", (0.5, 0.5, 0.5)),
        ).save_pretrained(stage)
    if not has_remote_code(stage):
        # folders saved before the bundle existed: generate it from the installed onetower;
        # a folder's own bundle is kept, being the code that saved its weights
        add_remote_code(stage)
    # the card of the staged copy, so its loading section sees the staged bundle; with no
    # run folder, the stage itself (no record there), never a guess in the temp dir above it
    run_dir = stage if run_dir is None else run_dir
    (stage / "README.md").write_text(model_card(stage, run_dir=run_dir, **card))
    return sorted(p.name for p in stage.iterdir() if p.is_file())


def _hint(error: Exception) -> str:
    """What to do about the usual upload failures."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, OfflineModeIsEnabled):
        return " (HF_HUB_OFFLINE is set: unset it to upload)"
    if isinstance(error, LocalTokenNotFoundError) or status == 401:
        return " (log in with `hf auth login`, set HF_TOKEN or pass token=...)"
    if isinstance(error, HfHubHTTPError) and status == 403:
        return " (the token cannot write to this repo or namespace)"
    return ""


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload onetower model",
    revision: str | None = None,
    run_dir: str | Path | None = None,
    **card_kwargs: Any,
) -> str:
    """Upload a saved onetower model (weights, config, processor, the trust_remote_code
    bundle and a generated model card).

    Args:
        folder: the saved model folder (a run's ``final/``); never modified.
        repo_id: ``"user/name"``; created if missing.
        token: Hub token; None = ``HF_TOKEN`` or the saved login.
        private: create the repo as private.
        commit_message: message of the upload commit.
        revision: branch to commit to (created if missing); None = the default branch.
        run_dir: the run folder; default: ``folder`` or its parent with config.yaml.
        **card_kwargs: ``license``, ``base_model``, ``datasets`` for
            :func:`~onetower.hub.model_card`.

    Returns:
        The URL of the commit.

    Raises:
        ModelFolderError: before any network call, if ``folder`` is not a complete model.
        HubUploadError: if creating the repo or the commit fails (offline, auth, HTTP).
    """
    folder = Path(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ModelFolderError(f"bad repo id {repo_id!r}: {e}") from None
    run = Path(run_dir) if run_dir is not None else find_run_dir(folder)
    check_model_folder(folder, run)
    with tempfile.TemporaryDirectory(prefix="onetower-push-") as tmp:
        stage = Path(tmp)
        files = _stage(folder, stage, run, {"repo_id": repo_id, **card_kwargs})
        OneTowerProcessor.from_pretrained(stage)  # the uploaded processor must load
        try:
            api = HfApi(token=token)
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            # one explicit commit rather than upload_folder, whose hf_xet pipeline may split it
            ops = [
                CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(stage / f)) for f in files
            ]
            info = api.create_commit(repo_id, ops, commit_message=commit_message, revision=revision)
        except Exception as e:  # every failure is reported the same way, with its cause
            raise HubUploadError(
                f"pushing to the Hub repo {repo_id!r} failed: {type(e).__name__}: {e}{_hint(e)}. "
                f"Nothing was changed locally: the model at {folder} is untouched."
            ) from e
    return str(info.commit_url)


def push_from_config(cfg: Any) -> str:
    """Run :func:`push_to_hub` from a :class:`PushConfig` (the recipe's entry point)."""
    for key in ("checkpoint", "repo_id"):
        if not cfg[key]:
            raise ModelFolderError(
                f"{key}=... is required (e.g. checkpoint=runs/vqa/final repo_id=me/onetower-vqa)"
            )
    return push_to_hub(
        cfg.checkpoint,
        cfg.repo_id,
        token=cfg.token,
        private=cfg.private,
        commit_message=cfg.commit_message,
        revision=cfg.revision,
        run_dir=cfg.run_dir,
        license=cfg.license,
        base_model=cfg.base_model,
        datasets=list(cfg.datasets) or None,
    )
