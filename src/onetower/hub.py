"""Share a trained onetower model on the Hugging Face Hub, with a generated model card.

:func:`push_to_hub` checks the model folder before any network call, stages an upload copy
(model files, processor, ``README.md``) in a temporary folder so the user's folder is never
written, then creates the repo and commits the staged files. :func:`model_card` writes the
card from the model folder and its run folder (``config.yaml``, ``metrics.json``).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCardData
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
)
from huggingface_hub.utils import validate_repo_id
from transformers import AutoTokenizer
from transformers.models.auto import modeling_auto

from onetower.modeling import OneTowerPreTrainedModel
from onetower.processing import TOKENIZER_FILES, OneTowerProcessor, missing_processor_files

#: Files of a model folder that are uploaded (anything else, e.g. optimizer state, is not).
MODEL_FILES = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
               "tokenizer*.json", "special_tokens_map.json", "vocab.txt", "processor_config.json",
               "preprocessor_config.json", "chat_template.jinja")  # fmt: skip
PIPELINE_TAGS = {"AutoModelForVisualQuestionAnswering": "visual-question-answering"}
#: The card's data and limitations paragraphs for a model trained on the synthetic world.
SYNTHETIC_NOTES = (
    "The built-in onetower synthetic world: coloured shapes on plain backgrounds "
    "with template captions, generated from a seed.",
    "Trained on **synthetic data** only: it knows simple shapes, colours and "
    "positions, not natural images. Do not use it for real-world predictions.",
)
REAL_LIMITS = ("It inherits the biases and gaps of its training data; evaluate it on your own "
               "data before relying on it.")  # fmt: skip
#: Keys of a run's data section that name real data (all null = the synthetic world).
DATA_KEYS = ("pairs", "texts", "images", "val_pairs", "root")


class ModelFolderError(ValueError):
    """The folder to push is not a complete onetower model; raised before any network call."""


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


def find_run_dir(folder: str | Path) -> Path | None:
    """The run folder of a saved model: ``folder`` or its parent, whichever holds config.yaml."""
    folder = Path(folder)
    return next((d for d in (folder, folder.parent) if (d / "config.yaml").is_file()), None)


def model_class(folder: str | Path) -> type[OneTowerPreTrainedModel]:
    """The onetower class named by ``folder/config.json``; raises ModelFolderError if the folder
    holds no onetower model config (missing, unreadable, another model type or class)."""
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
    classes = {c.__name__: c for c in _subclasses(OneTowerPreTrainedModel)}
    name = (config.get("architectures") or ["OneTowerModel"])[0]
    if name not in classes:
        raise ModelFolderError(f"{path} names {name!r}, not a onetower model class")
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


def _read(path: Path, parse: Any) -> Any:
    return parse(path.read_text()) if path.is_file() else None


def _param_count(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:  # reads the headers only
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def _run_facts(run: Path | None) -> dict[str, Any]:
    """What a run folder records: its config (text and parsed), metrics, recipe, task, data."""
    text = _read(run / "config.yaml", str) if run else None
    cfg = (yaml.safe_load(text) if text else None) or {}
    record = (_read(run / "metrics.json", json.loads) if run else None) or {}
    data = cfg.get("data") or {}
    sources = [str(v) for k, v in data.items() if k in DATA_KEYS and v]
    synthetic = not sources and "synthetic" in data
    return {
        "yaml": text, "cfg": cfg, "record": record, "synthetic": synthetic,
        "recipe": (cfg.get("run") or {}).get("recipe") or "unknown-recipe",
        "task": (cfg.get("task") or {}).get("name"),
        "dataset": "onetower synthetic world" if synthetic else ", ".join(sources) or "unknown",
        "metrics": {k: float(v) for k, v in (record.get("metrics") or {}).items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)},
    }  # fmt: skip


def _metadata(cls: type, run: dict[str, Any], name: str, **card: Any) -> ModelCardData:
    pipeline_tag = PIPELINE_TAGS.get(auto_class_name(cls) or "")
    results = [
        EvalResult(task_type=pipeline_tag or run["task"] or "vision-language-pretraining",
                   dataset_type="synthetic" if run["synthetic"] else run["dataset"],
                   dataset_name=run["dataset"], metric_type=k.removeprefix("eval/"),
                   metric_name=k, metric_value=round(v, 4))
        for k, v in run["metrics"].items()
    ]  # fmt: skip
    tags = ["onetower", "vision-language", "single-stream", run["recipe"]]
    tags += ([run["task"]] if run["task"] else []) + (["synthetic-data"] if run["synthetic"] else [])  # fmt: skip
    return ModelCardData(
        library_name="onetower", pipeline_tag=pipeline_tag, model_name=name, tags=tags,
        metrics=[k.removeprefix("eval/") for k in run["metrics"]] or None,
        eval_results=results or None, license=card["license"], base_model=card["base_model"],
        datasets=card["datasets"] or None,
    )  # fmt: skip


def model_card(folder: str | Path, repo_id: str | None = None, run_dir: str | Path | None = None,
               license: str = "apache-2.0", base_model: str | None = None,
               datasets: list[str] | None = None) -> str:  # fmt: skip
    """A ``README.md`` (YAML metadata + sections) for the model saved in ``folder``.

    Args:
        folder: the saved model (``config.json``, weights).
        repo_id: the Hub id, used in the title and the loading snippet.
        run_dir: the run that trained it; default: ``folder`` or its parent with config.yaml.
        license: license id for the metadata.
        base_model: Hub id of the model this one was fine-tuned from; default: the run's
            ``init`` when it looks like a Hub id rather than a local folder.
        datasets: Hub ids of the training datasets.

    Returns:
        The card text.

    Raises:
        ModelFolderError: ``folder`` holds no onetower model config.
    """
    folder = Path(folder)
    cls = model_class(folder)
    c = json.loads((folder / "config.json").read_text())
    run = _run_facts(Path(run_dir) if run_dir is not None else find_run_dir(folder))
    init = run["cfg"].get("init")
    if base_model is None and isinstance(init, str) and init.count("/") == 1:
        base_model = None if Path(init).exists() else init  # a Hub id, not a local folder
    name = repo_id.split("/")[-1] if repo_id else folder.resolve().parent.name
    meta = _metadata(cls, run, name, license=license, base_model=base_model, datasets=datasets)
    objectives = ", ".join(f"{k} (weight {(v or {}).get('weight', 1.0)})"
                           for k, v in (run["cfg"].get("objectives") or {}).items())  # fmt: skip
    auto = auto_class_name(cls)
    loader, source, where = auto or cls.__name__, "transformers" if auto else "onetower", repo_id or folder  # fmt: skip
    rows = "".join(f"\n| {k} | {v:.4f} |" for k, v in run["metrics"].items())
    table = f"| metric | value |\n|---|---|{rows}" if rows else "No metrics were recorded."
    rec = run["record"]
    training = (f"{rec.get('steps', '?')} steps on {rec.get('world_size', '?')} process(es). The "
                f"run's resolved `config.yaml`:\n\n```yaml\n{run['yaml'].strip()}\n```"
                if run["yaml"] else "The run's config.yaml was not found beside the model.")  # fmt: skip
    data = (SYNTHETIC_NOTES[0] if run["synthetic"] else f"{run['dataset']}.") + (
        f" Initialised from `{init}`." if init else "")  # fmt: skip
    return f"""---
{meta.to_yaml()}
---

# {name}

A single-stream vision-language transformer (`{cls.__name__}`) trained with the onetower
`{run["recipe"]}` recipe{f" for {run['task']}" if run["task"] else ""}.

## Model description

One shared transformer reads `[text tokens ; image patches]` with segment (modality-type)
embeddings, as in ViLT.

- parameters: {_param_count(folder) / 1e6:.2f} M
- fusion encoder: {c["num_hidden_layers"]} layers, width {c["hidden_size"]}, {c["num_attention_heads"]} heads, MLP {c["intermediate_size"]}
- unimodal towers: {c.get("text_tower_layers", 0)} text / {c.get("image_tower_layers", 0)} image layers; multiway: {c.get("multiway")}
- input: {c["image_size"]} px images in {c["patch_size"]} px patches; up to {c["max_text_len"]} text tokens, vocabulary {c["vocab_size"]}
- objectives: {objectives or "not recorded"}

## Training config

{training}

## Data

{data}

## Evaluation

{table}

## Intended use

Research on vision-language pretraining and fine-tuning (retrieval, VQA, visual reasoning):
a starting point for fine-tuning, or a baseline.

## Limitations

{SYNTHETIC_NOTES[1] if run["synthetic"] else REAL_LIMITS}

## How to load

```python
import onetower  # registers the onetower classes with transformers' Auto classes
from transformers import AutoProcessor
from {source} import {loader}

model = {loader}.from_pretrained("{where}")
processor = AutoProcessor.from_pretrained("{where}")
inputs = processor(images=image, text="a red circle", return_tensors="pt")
outputs = model(**inputs)
```
"""


def _stage(folder: Path, stage: Path, run_dir: Path | None, card: dict[str, Any]) -> list[str]:
    """Copy the model files into ``stage``, build the processor if the folder has none, write
    README.md. Returns the staged file names."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and any(fnmatch(path.name, p) for p in MODEL_FILES):
            shutil.copy2(path, stage / path.name)
    if missing_processor_files(folder):
        # runs saved before the processor existed: rebuild it from the run's data config,
        # the same values the training loop built its eval transform from
        model_cfg = json.loads((folder / "config.json").read_text())
        data = (_read(run_dir / "config.yaml", yaml.safe_load) or {}).get("data") or {}
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        OneTowerProcessor.from_config(
            tokenizer, image_size=model_cfg["image_size"], max_text_len=model_cfg["max_text_len"],
            mean=data.get("mean", (0.5, 0.5, 0.5)), std=data.get("std", (0.5, 0.5, 0.5)),
        ).save_pretrained(stage)  # fmt: skip
    (stage / "README.md").write_text(model_card(folder, run_dir=run_dir, **card))
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


def push_to_hub(folder: str | Path, repo_id: str, *, token: str | None = None,
                private: bool = False, commit_message: str = "Upload onetower model",
                revision: str | None = None, run_dir: str | Path | None = None,
                **card_kwargs: Any) -> str:  # fmt: skip
    """Upload a saved onetower model (weights, config, processor, generated model card).

    Args:
        folder: the saved model folder (a run's ``final/``); never modified.
        repo_id: ``"user/name"``; created if missing.
        token: Hub token; None = ``HF_TOKEN`` or the saved login.
        private: create the repo as private.
        commit_message: message of the upload commit.
        revision: branch to commit to (created if missing); None = the default branch.
        run_dir: the run folder; default: ``folder`` or its parent with config.yaml.
        **card_kwargs: ``license``, ``base_model``, ``datasets`` for :func:`model_card`.

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
            raise ModelFolderError(f"{key}=... is required (e.g. checkpoint=runs/vqa/final repo_id=me/onetower-vqa)")  # fmt: skip
    return push_to_hub(cfg.checkpoint, cfg.repo_id, token=cfg.token, private=cfg.private,
                       commit_message=cfg.commit_message, revision=cfg.revision,
                       run_dir=cfg.run_dir, license=cfg.license, base_model=cfg.base_model,
                       datasets=list(cfg.datasets) or None)  # fmt: skip
