"""The model card (``README.md``) of a saved onetower model, from its folder and its run record.

The run record is the run folder's ``metrics.json``, one layout for pretraining and
fine-tuning::

    {"recipe": "finetune_vqa", "task": "vqa", "steps": 2000, "world_size": 1,
     "distributed_type": "NO", "mixed_precision": "no", "train_seconds": 300.1,
     "samples_per_s": 210.0, "replicas_identical": true, "init": "runs/flava_like/final",
     "metrics": {"val2014/vqa_acc": 93.1},
     "data": {"sources": ["/data/vqa"], "description": "...", "limitations": null,
              "tags": []},
     "skipped": {}, "summary": "..."}

Everything the card says about the data (description, sources, limitations, tags) comes from
the record's ``data`` section; a record without it gives "not recorded" wording. The run's
``config.yaml``, when present, is shown verbatim and fills in the recipe, task and objectives
of older records.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCardData

from onetower.hub.folder import auto_class_name, find_run_dir, model_class, write_text_atomic
from onetower.hub.remote_code import has_remote_code

PIPELINE_TAGS = {"AutoModelForVisualQuestionAnswering": "visual-question-answering"}
#: The Limitations paragraph when the record gives none.
REAL_LIMITS = (
    "It inherits the biases and gaps of its training data; evaluate it on your own "
    "data before relying on it."
)
#: Metric-key prefix that names no data split (``eval/mlm_loss``); others do (``val2014/...``).
EVAL_PREFIX = "eval"


def _read(path: Path, parse: Any) -> Any:
    return parse(path.read_text()) if path.is_file() else None


def _param_count(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:  # reads the headers only
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _run_facts(run: Path | None) -> dict[str, Any]:
    """What a run folder records: the run record, the config (text and parsed), and from them
    the recipe, task, init, finite metrics and the data section (None when not recorded)."""
    text = _read(run / "config.yaml", str) if run else None
    cfg = _dict(yaml.safe_load(text) if text else None)
    record = _dict(_read(run / "metrics.json", json.loads) if run else None)
    data = record.get("data") if isinstance(record.get("data"), dict) else None
    metrics = {
        str(k): float(v)
        for k, v in _dict(record.get("metrics")).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    return {
        "yaml": text,
        "cfg": cfg,
        "record": record,
        "data": data,
        "metrics": metrics,
        "recipe": record.get("recipe") or _dict(cfg.get("run")).get("recipe") or "unknown-recipe",
        "task": record.get("task") or _dict(cfg.get("task")).get("name"),
        "init": record.get("init") or cfg.get("init"),
        "sources": [str(s) for s in (data or {}).get("sources") or []],
    }


def _dataset(run: dict[str, Any]) -> tuple[str, str]:
    """(type, name) of the training data for the card's eval results."""
    if run["sources"]:
        name = ", ".join(run["sources"])
        return name, name
    if run["data"] is not None:  # recorded, with no files: the recipe's built-in data
        return "built-in", f"built-in data of the {run['recipe']} recipe"
    return "unknown", "not recorded"


def _split(key: str) -> tuple[str | None, str]:
    """``"val2014/vqa_acc"`` -> ("val2014", "vqa_acc"); ``"eval/x"`` -> (None, "x")."""
    prefix, _, name = key.partition("/")
    if not name:  # no prefix at all
        return None, key
    return (None if prefix == EVAL_PREFIX else prefix), name


def _tags(run: dict[str, Any]) -> list[str]:
    tags = ["onetower", "vision-language", "single-stream", run["recipe"]]
    tags += [run["task"]] if run["task"] else []
    tags += [str(t) for t in (run["data"] or {}).get("tags") or []]
    return list(dict.fromkeys(tags))  # once each, in order


def _metadata(cls: type, run: dict[str, Any], name: str, **card: Any) -> ModelCardData:
    pipeline_tag = PIPELINE_TAGS.get(auto_class_name(cls) or "")
    dataset_type, dataset_name = _dataset(run)
    results = [
        EvalResult(
            task_type=pipeline_tag or run["task"] or "vision-language-pretraining",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split=_split(k)[0],
            metric_type=_split(k)[1],
            metric_name=k,
            metric_value=round(v, 4),
        )
        for k, v in run["metrics"].items()
    ]
    return ModelCardData(
        library_name="onetower",
        pipeline_tag=pipeline_tag,
        model_name=name,
        tags=_tags(run),
        metrics=list(dict.fromkeys(_split(k)[1] for k in run["metrics"])) or None,
        eval_results=results or None,
        license=card["license"],
        base_model=card["base_model"],
        datasets=card["datasets"] or None,
    )


def _training(run: dict[str, Any]) -> str:
    """The Training section: what the record says about the run, then its config.yaml."""
    rec = run["record"]
    lines = [str(rec["summary"]), ""] if rec.get("summary") else []
    if "steps" in rec:
        how = ", ".join(
            f"{k.replace('_', ' ')}: {rec[k]}"
            for k in ("distributed_type", "mixed_precision")
            if k in rec
        )
        lines.append(
            f"- {rec['steps']} steps on {rec.get('world_size', '?')} process(es)"
            + (f" ({how})" if how else "")
        )
    if isinstance(rec.get("train_seconds"), int | float):
        speed = rec.get("samples_per_s")
        lines.append(
            f"- training time: {rec['train_seconds'] / 60:.1f} min"
            + (f", {speed:.0f} samples/s" if isinstance(speed, int | float) else "")
        )
    if "replicas_identical" in rec:
        lines.append(
            f"- replicas identical at the end: {'yes' if rec['replicas_identical'] else 'no'}"
        )
    if run["init"]:
        lines.append(f"- initialised from `{run['init']}`")
    if run["yaml"]:
        lines += ["", f"The run's resolved `config.yaml`:\n\n```yaml\n{run['yaml'].strip()}\n```"]
    else:
        lines += ["", "The run's config.yaml was not found beside the model."]
    return "\n".join(lines).strip()


def _data(run: dict[str, Any]) -> str:
    """The Data section: the record's description, sources and skipped samples."""
    data = run["data"]
    if data is None:
        return "The training data was not recorded with the run."
    parts = [str(data.get("description") or "The training data was not described.")]
    if run["sources"]:
        parts.append("Sources: " + ", ".join(f"`{s}`" for s in run["sources"]) + ".")
    skipped = {k: v for k, v in _dict(run["record"].get("skipped")).items() if v}
    if skipped:
        parts.append(
            "Samples skipped in training: "
            + ", ".join(f"{k}: {v}" for k, v in skipped.items())
            + "."
        )
    return "\n\n".join(parts)


def _evaluation(run: dict[str, Any]) -> str:
    rows = "".join(f"\n| {k} | {v:.4f} |" for k, v in run["metrics"].items())
    return f"| metric | value |\n|---|---|{rows}" if rows else "No metrics were recorded."


def _how_to_load(cls: type, where: str | Path, remote: bool, image_size: int) -> str:
    auto = auto_class_name(cls)
    loader, source = (auto, "transformers") if auto else (cls.__name__, "onetower")
    text = f"""With onetower installed:

```python
import onetower  # registers the onetower classes with transformers' Auto classes
from transformers import AutoProcessor
from {source} import {loader}

model = {loader}.from_pretrained("{where}")
processor = AutoProcessor.from_pretrained("{where}")
inputs = processor(images=image, text="what is in the picture?", return_tensors="pt")
outputs = model(**inputs)
```"""
    if not remote or not auto:
        return text
    return f"""{text}

Without onetower, the model code shipped in this repository (`configuration_onetower.py`,
`modeling_onetower*.py`, `onetower_*.py`; it needs torch, transformers, timm and einops):

```python
from transformers import AutoTokenizer, {auto}

model = {auto}.from_pretrained("{where}", trust_remote_code=True)
# trust_remote_code here too: the tokenizer reads config.json, which names that code
tokenizer = AutoTokenizer.from_pretrained("{where}", trust_remote_code=True)
```

The processor is part of onetower: without it, give the model `pixel_values` of
{image_size} x {image_size} images normalised with the `image_mean` / `image_std` saved in
the processor's config."""


def model_card(
    folder: str | Path,
    repo_id: str | None = None,
    run_dir: str | Path | None = None,
    license: str = "apache-2.0",
    base_model: str | None = None,
    datasets: list[str] | None = None,
) -> str:
    """A ``README.md`` (YAML metadata + sections) for the model saved in ``folder``.

    Args:
        folder: the saved model (``config.json``, weights).
        repo_id: the Hub id, used in the title and the loading snippet.
        run_dir: the run that trained it (``metrics.json``, ``config.yaml``); default:
            ``folder`` or its parent with config.yaml.
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
    init = run["init"]
    if base_model is None and isinstance(init, str) and init.count("/") == 1:
        base_model = None if Path(init).exists() else init  # a Hub id, not a local folder
    name = repo_id.split("/")[-1] if repo_id else folder.resolve().parent.name
    meta = _metadata(cls, run, name, license=license, base_model=base_model, datasets=datasets)
    objectives = ", ".join(
        f"{k} (weight {_dict(v).get('weight', 1.0)})"
        for k, v in _dict(run["cfg"].get("objectives")).items()
    )
    task = f" for {run['task']}" if run["task"] else ""
    limits = (run["data"] or {}).get("limitations") or REAL_LIMITS
    load = _how_to_load(cls, repo_id or folder, has_remote_code(folder), c["image_size"])
    return f"""---
{meta.to_yaml()}
---

# {name}

A single-stream vision-language transformer (`{cls.__name__}`) trained with the onetower
`{run["recipe"]}` recipe{task}.

## Model description

One shared transformer reads `[text tokens ; image patches]` with segment (modality-type)
embeddings, as in ViLT.

- parameters: {_param_count(folder) / 1e6:.2f} M
- fusion encoder: {c["num_hidden_layers"]} layers, width {c["hidden_size"]}, {c["num_attention_heads"]} heads, MLP {c["intermediate_size"]}
- unimodal towers: {c.get("text_tower_layers", 0)} text / {c.get("image_tower_layers", 0)} image layers; multiway: {c.get("multiway")}
- input: {c["image_size"]} px images in {c["patch_size"]} px patches; up to {c["max_text_len"]} text tokens, vocabulary {c["vocab_size"]}
- objectives: {objectives or "not recorded"}

## Training

{_training(run)}

## Data

{_data(run)}

## Evaluation

{_evaluation(run)}

## Intended use

Research on vision-language pretraining and fine-tuning (retrieval, VQA, visual reasoning):
a starting point for fine-tuning, or a baseline.

## Limitations

{limits}

## How to load

{load}
"""


def write_model_card(
    folder: str | Path, run_dir: str | Path | None = None, **card_kwargs: Any
) -> Path:
    """Write :func:`model_card` as ``folder/README.md``, atomically (a temporary file renamed
    over it), so a reader never sees half a card.

    Args:
        folder: the saved model.
        run_dir: its run folder; default: ``folder`` or its parent with config.yaml.
        **card_kwargs: ``repo_id``, ``license``, ``base_model``, ``datasets`` for
            :func:`model_card`.

    Returns:
        The path of the card.
    """
    text = model_card(folder, run_dir=run_dir, **card_kwargs)
    return write_text_atomic(Path(folder) / "README.md", text)
