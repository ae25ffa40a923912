"""Fine-tuning as a task the engine drives: a task model (VQA v2, NLVR2, ...) from a
pretrained encoder.

What differs between tasks (data, labels, model class, metric) lives in one file per task
(``vqa.py``, ``nlvr2.py``); this file is what they share: where the model starts (``init``),
where the data comes from, the new head's learning rate (``task.head_lr_mult``), evaluation
with a predictions file per split, and the saved processor.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from omegaconf import DictConfig, OmegaConf
from torch import nn

from onetower.configuration import OneTowerConfig
from onetower.data import CachedDataset, build_image_transform, load_tokenizer
from onetower.data.synthetic import CARD_DATA, synthetic_world_under
from onetower.finetuning.registry import TASKS
from onetower.finetuning.spec import FinetuneSpec, TaskData, inputs, task_summary
from onetower.hub import onetower_folder
from onetower.modeling import OneTowerModel
from onetower.processing import OneTowerProcessor
from onetower.task_models import TaskModel
from onetower.training.config import ConfigError
from onetower.training.optim import param_groups
from onetower.training.task import Built, RunInfo, StepContext, StepOutput


def init_config(cfg: DictConfig) -> tuple[OneTowerConfig, Any | None]:
    """The encoder config the run starts from, and the saved labels when ``init`` is a task
    model of this task."""
    if cfg.init_weights not in ("pretrained", "random"):  # before any data is loaded
        raise ConfigError(
            f"init_weights must be 'pretrained' or 'random', got {cfg.init_weights!r}"
        )
    if cfg.init is None:
        fields = OmegaConf.to_container(cfg.model, resolve=True)
        size = fields.pop("size", None)
        try:
            config = OneTowerConfig.from_size(size, **fields) if size else OneTowerConfig(**fields)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model: {e}") from None
        return config, None
    onetower_folder(
        cfg.init, "init"
    )  # one line for a BERT, a timm checkpoint, a half-written folder
    config = OneTowerConfig.from_pretrained(cfg.init)
    # the architecture comes with the saved model: a model.* field that says otherwise is an
    # error, not silently ignored
    clash = {k: v for k, v in cfg.model.items() if k != "size" and getattr(config, k, v) != v}
    if clash:
        raise ConfigError(
            f"init={cfg.init!r} loads a saved model whose "
            + ", ".join(f"{k}={getattr(config, k)!r}" for k in sorted(clash))
            + f" differ from model.{sorted(clash)}: drop those keys"
        )
    task_cls = TASKS[cfg.task.name].model_class.__name__
    saved_as = (config.architectures or ["OneTowerModel"])[0]
    if saved_as not in ("OneTowerModel", task_cls):
        raise ConfigError(f"init={cfg.init!r} is a {saved_as}, not an encoder or a {task_cls}")
    return config, (config.id2label if saved_as == task_cls else None)


def resolve_data(
    cfg: DictConfig, accelerator: Accelerator, config: OneTowerConfig
) -> tuple[Path, str]:
    """The task folder and tokenizer folder (the synthetic world when none is given)."""
    d, task = cfg.data, cfg.task.name
    tok = d.tokenizer or (
        cfg.init if cfg.init and Path(cfg.init, "tokenizer.json").exists() else None
    )
    if d.root is not None and not Path(d.root).exists():
        raise FileNotFoundError(f"data.root: {d.root!r} does not exist")
    root = Path(d.root) if d.root else None
    if root is not None and tok is None:
        # the synthetic world's tokenizer would silently mis-read real questions
        raise ConfigError(
            "data.root names real task files but no tokenizer was found: "
            + (f"{cfg.init} has no tokenizer.json; " if cfg.init else "")
            + "set data.tokenizer to the tokenizer the model was pretrained with"
        )
    if root is None:
        s = d.synthetic
        with accelerator.main_process_first():
            world = synthetic_world_under(
                s.root,
                seed=s.seed,
                n_train=64,
                n_val=16,
                image_size=config.image_size,
                text_length=config.max_text_len,
                vqa_train=s.vqa_train,
                vqa_val=s.vqa_val,
                nlvr2_train=s.nlvr2_train,
                nlvr2_val=s.nlvr2_val,
            )
        root = world.vqa_dir if task == "vqa" else world.nlvr2_dir
        tok = tok or str(world.tokenizer_dir)
    if tok is None or not Path(tok).exists():
        raise FileNotFoundError(f"tokenizer folder {tok!r} does not exist: set data.tokenizer")
    return root, tok


def origin(cfg: DictConfig) -> str:
    if cfg.init is None:
        return "random init"
    return (
        f"random init (the architecture of {cfg.init})"
        if cfg.init_weights == "random"
        else cfg.init
    )


def build_task_model(
    cfg: DictConfig, task: FinetuneSpec, config: OneTowerConfig, data: TaskData
) -> TaskModel:
    head = dict(
        classifier_pooling=cfg.task.classifier_pooling,
        multi_image_method=cfg.task.multi_image_method,
    )
    try:
        if cfg.init is None or cfg.init_weights == "random":
            return task.model_class.from_encoder(OneTowerModel(config), data.id2label, **head)
        saved_as = (config.architectures or ["OneTowerModel"])[0]
        if saved_as == task.model_class.__name__:
            return task.model_class.from_pretrained(cfg.init)
        return task.model_class.from_encoder(cfg.init, data.id2label, **head)
    except ValueError as e:
        for key in head:
            if key in str(e):
                raise ConfigError(f"task.{key}: {e}") from None
        raise


@torch.no_grad()
def evaluate_task(
    model: TaskModel,
    task: FinetuneSpec,
    data: TaskData,
    cfg: DictConfig,
    out_dir: Path,
    device: torch.device,
) -> dict[str, float]:
    """Predict every eval split, write its predictions file, return ``{split/metric: value}``."""
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    for split, dataset in data.evals.items():
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.eval.batch_size, collate_fn=data.collate
        )
        predictions: dict[int, str] = {}
        for batch in loader:
            if batch:
                batch = {k: v.to(device) for k, v in batch.items()}
                predictions |= task.predict(model, batch)
        scores = task.score(predictions, data.annotations[split], out_dir / f"predictions_{split}")
        metrics |= {f"{split}/{k}": v for k, v in scores.items()}
    model.train(was_training)
    return metrics


def save_processor(folder: Path, tokenizer: Any, config: OneTowerConfig, d: DictConfig) -> None:
    """Save the processor (tokenizer + the eval image transform) with the model, so the
    folder answers questions about image files on its own."""
    processor = OneTowerProcessor.from_config(
        tokenizer,
        image_size=config.image_size,
        mean=list(d.mean),
        std=list(d.std),
        max_text_len=config.max_text_len,
    )
    processor.save_pretrained(str(folder))


class FinetuneTask:
    """The :class:`~onetower.training.task.Task` of the fine-tuning recipes."""

    # a task model uses every parameter: DDP's search for unused ones would be wasted
    find_unused_parameters = False

    def __init__(self, cfg: DictConfig) -> None:
        if cfg.task.name not in TASKS:
            raise ConfigError(f"task.name must be one of {sorted(TASKS)}, got {cfg.task.name!r}")
        self.cfg, self.spec = cfg, TASKS[cfg.task.name]
        self.name = cfg.task.name

    def build(self, accelerator: Accelerator) -> Built:
        cfg, spec, d, t = self.cfg, self.spec, self.cfg.data, self.cfg.train
        datasets.disable_progress_bars()  # the per-question map / filter bars are noise here
        self.config, init_labels = init_config(cfg)
        root, tok_path = resolve_data(cfg, accelerator, self.config)
        self.card = (
            {"sources": [str(root)], "description": f"{spec.name} files in {root}."}
            if cfg.data.root
            else {"sources": [], **CARD_DATA}
        )
        self.tokenizer = load_tokenizer(tok_path, model_max_length=self.config.max_text_len)
        if len(self.tokenizer) > self.config.vocab_size:
            raise ConfigError(
                f"the tokenizer has {len(self.tokenizer)} tokens, the model {self.config.vocab_size}"
            )
        norm = dict(mean=tuple(d.mean), std=tuple(d.std))
        size = d.image_size or self.config.image_size
        if size % self.config.patch_size:
            raise ConfigError(
                f"data.image_size {size} is not a multiple of the patch size "
                f"{self.config.patch_size}"
            )
        transforms = {
            "train": build_image_transform(size, d.augment, scale=tuple(d.crop_scale), **norm),
            "eval": build_image_transform(size, False, **norm),
        }
        self.data = data = spec.build(
            cfg, root, self.tokenizer, size, self.config.max_text_len, transforms, init_labels
        )
        if d.cache_mb > 0 and not d.augment:  # the same samples every epoch: decode them once
            data.train = CachedDataset(data.train, d.cache_mb * 2**20)
        model = build_task_model(cfg, spec, self.config, data)
        if size != model.config.image_size:  # fine-tuning at another resolution
            model.onetower.image.resize_position_embeddings(size)
            model.config.image_size = model.onetower.config.image_size = size
            self.config = model.config
        if t.activation_checkpointing:
            model.onetower.activation_checkpointing_enable()
        if t.compile:
            model.onetower.encoder.compile()
        groups = param_groups(
            model, t.weight_decay, t.lr, model.head_prefixes, cfg.task.head_lr_mult
        )
        loader = torch.utils.data.DataLoader(
            data.train,
            batch_size=d.batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=data.collate,
            num_workers=d.num_workers,
            generator=torch.Generator().manual_seed(cfg.run.seed),
            persistent_workers=d.num_workers > 0,
        )
        return Built(model, groups, {"train": loader}, {"train": 1.0}, d.batch_size)

    def step(self, module: nn.Module, batch: Mapping[str, Any], ctx: StepContext) -> StepOutput:
        return StepOutput(module(**inputs(batch)).loss)

    def after_optimizer_step(self, module: nn.Module) -> None:
        pass

    def evaluate(self, module: nn.Module, accelerator: Accelerator, step: int) -> dict[str, float]:
        if not accelerator.is_main_process:  # the others wait in the engine
            return {}
        out_dir = Path(self.cfg.run.output_dir)
        return evaluate_task(module, self.spec, self.data, self.cfg, out_dir, accelerator.device)

    def save(self, module: nn.Module, folder: Path) -> None:
        """The task model, its tokenizer and the processor (tokenizer + eval image
        transform), so the folder answers questions about image files on its own."""
        module.save_pretrained(folder)
        self.tokenizer.save_pretrained(str(folder))
        save_processor(folder, self.tokenizer, self.config, self.cfg.data)

    def finish(self, module: nn.Module, accelerator: Accelerator, info: RunInfo) -> dict[str, Any]:
        self.data.counter.check()
        summary = (
            f"Fine-tuned {self.name} from {origin(self.cfg)} for {info.steps_this_run} steps "
            f"({info.seconds / 60:.1f} min, {info.samples_per_s:.0f} samples/s): "
            f"{task_summary(info.metrics) or 'no labelled eval split'}. Model: {info.final_dir} "
            f"(`import onetower` then {type(module).__name__}.from_pretrained, or an Auto class "
            f"with trust_remote_code=True); predictions and metrics.json in {info.output_dir}. "
            f"Skipped samples: {self.data.counter.summary()}."
        )
        return {
            "model_class": type(module).__name__,
            "summary": summary,
            "data": self.card,
            "skipped": self.data.counter.counts(),
            "init": self.cfg.init,
        }
