"""The model card (``README.md``) of a saved onetower model, from its folder and run folder
(``config.yaml``, ``metrics.json``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCardData

from onetower.hub.folder import auto_class_name, find_run_dir, model_class

PIPELINE_TAGS = {"AutoModelForVisualQuestionAnswering": "visual-question-answering"}
#: The card's data and limitations paragraphs for a model trained on the synthetic world.
SYNTHETIC_NOTES = (
    "The built-in onetower synthetic world: coloured shapes on plain backgrounds "
    "with template captions, generated from a seed.",
    "Trained on **synthetic data** only: it knows simple shapes, colours and "
    "positions, not natural images. Do not use it for real-world predictions.",
)
REAL_LIMITS = (
    "It inherits the biases and gaps of its training data; evaluate it on your own "
    "data before relying on it."
)
#: Keys of a run's data section that name real data (all null = the synthetic world).
DATA_KEYS = ("pairs", "texts", "images", "val_pairs", "root")


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
        "yaml": text,
        "cfg": cfg,
        "record": record,
        "synthetic": synthetic,
        "recipe": (cfg.get("run") or {}).get("recipe") or "unknown-recipe",
        "task": (cfg.get("task") or {}).get("name"),
        "dataset": "onetower synthetic world" if synthetic else ", ".join(sources) or "unknown",
        "metrics": {
            k: float(v)
            for k, v in (record.get("metrics") or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        },
    }


def _metadata(cls: type, run: dict[str, Any], name: str, **card: Any) -> ModelCardData:
    pipeline_tag = PIPELINE_TAGS.get(auto_class_name(cls) or "")
    results = [
        EvalResult(
            task_type=pipeline_tag or run["task"] or "vision-language-pretraining",
            dataset_type="synthetic" if run["synthetic"] else run["dataset"],
            dataset_name=run["dataset"],
            metric_type=k.removeprefix("eval/"),
            metric_name=k,
            metric_value=round(v, 4),
        )
        for k, v in run["metrics"].items()
    ]
    tags = ["onetower", "vision-language", "single-stream", run["recipe"]]
    tags += ([run["task"]] if run["task"] else []) + (
        ["synthetic-data"] if run["synthetic"] else []
    )
    return ModelCardData(
        library_name="onetower",
        pipeline_tag=pipeline_tag,
        model_name=name,
        tags=tags,
        metrics=[k.removeprefix("eval/") for k in run["metrics"]] or None,
        eval_results=results or None,
        license=card["license"],
        base_model=card["base_model"],
        datasets=card["datasets"] or None,
    )


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
    objectives = ", ".join(
        f"{k} (weight {(v or {}).get('weight', 1.0)})"
        for k, v in (run["cfg"].get("objectives") or {}).items()
    )
    auto = auto_class_name(cls)
    loader, source, where = (
        auto or cls.__name__,
        "transformers" if auto else "onetower",
        repo_id or folder,
    )
    rows = "".join(f"\n| {k} | {v:.4f} |" for k, v in run["metrics"].items())
    table = f"| metric | value |\n|---|---|{rows}" if rows else "No metrics were recorded."
    rec = run["record"]
    training = (
        f"{rec.get('steps', '?')} steps on {rec.get('world_size', '?')} process(es). The "
        f"run's resolved `config.yaml`:\n\n```yaml\n{run['yaml'].strip()}\n```"
        if run["yaml"]
        else "The run's config.yaml was not found beside the model."
    )
    data = (SYNTHETIC_NOTES[0] if run["synthetic"] else f"{run['dataset']}.") + (
        f" Initialised from `{init}`." if init else ""
    )
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
