"""Fine-tune a task model (VQA v2, NLVR2) from a pretrained encoder, through Accelerate.

The loop shares the pretraining loop's pieces: the Accelerator, exact resume (seedable
sampler + per-source position), atomic checkpoints, the output-dir guard and the final save.
It adds the task head with its own learning rate (``task.head_lr_mult``), evaluation with
the task's metric, and a predictions file per evaluation split.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from onetower.configuration import OneTowerConfig
from onetower.data import (
    CachedDataset,
    build_image_transform,
    ensure_synthetic_world,
    load_tokenizer,
)
from onetower.data.world import WORLD_VERSION
from onetower.modeling import OneTowerModel
from onetower.processing import OneTowerProcessor
from onetower.task_models import TaskModel
from onetower.training.config import ConfigError
from onetower.training.data import MixedStream
from onetower.training.optim import build_optimizer, build_scheduler
from onetower.training.plots import plot_losses
from onetower.training.report import RunResult, save_final_model
from onetower.training.steps import RunningLogs, TrainState, open_run, start_state, stop_early
from onetower.training.tasks import TASKS, TaskData, dump_json, inputs, task_summary


def _init_config(cfg: DictConfig) -> tuple[OneTowerConfig, Any | None]:
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
    if not Path(cfg.init, "config.json").is_file():
        raise FileNotFoundError(f"init={cfg.init!r} is not a saved onetower model (no config.json)")
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


def _resolve_data(
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
        name = (f"v{WORLD_VERSION}_seed{s.seed}_vqa{s.vqa_train}+{s.vqa_val}_nlvr2{s.nlvr2_train}+{s.nlvr2_val}"
                f"_{config.image_size}px_len{config.max_text_len}")  # fmt: skip
        with accelerator.main_process_first():
            world = ensure_synthetic_world(
                Path(s.root) / name, seed=s.seed, n_train=64, n_val=16,
                image_size=config.image_size, text_length=config.max_text_len,
                vqa_train=s.vqa_train, vqa_val=s.vqa_val,
                nlvr2_train=s.nlvr2_train, nlvr2_val=s.nlvr2_val,
            )  # fmt: skip
        root = world.vqa_dir if task == "vqa" else world.nlvr2_dir
        tok = tok or str(world.tokenizer_dir)
    if tok is None or not Path(tok).exists():
        raise FileNotFoundError(f"tokenizer folder {tok!r} does not exist: set data.tokenizer")
    return root, tok


def _origin(cfg: DictConfig) -> str:
    if cfg.init is None:
        return "random init"
    return (
        f"random init (the architecture of {cfg.init})"
        if cfg.init_weights == "random"
        else cfg.init
    )


def _build_model(cfg: DictConfig, task: Any, config: OneTowerConfig, data: TaskData) -> TaskModel:
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
def evaluate_task(model: TaskModel, task: Any, data: TaskData, cfg: DictConfig,
                  out_dir: Path, device: torch.device) -> dict[str, float]:  # fmt: skip
    """Predict every eval split, write its predictions file, return ``{split/metric: value}``."""
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    for split, dataset in data.evals.items():
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.eval.batch_size,
                                             collate_fn=data.collate)  # fmt: skip
        predictions: dict[int, str] = {}
        for batch in loader:
            if batch:
                batch = {k: v.to(device) for k, v in batch.items()}
                predictions |= task.predict(model, batch)
        scores = task.score(predictions, data.annotations[split], out_dir / f"predictions_{split}")
        metrics |= {f"{split}/{k}": v for k, v in scores.items()}
    model.train(was_training)
    return metrics


def finetune(cfg: DictConfig) -> RunResult:
    """Run a fine-tuning recipe described by ``cfg`` (see ``FinetuneConfig``)."""
    if cfg.task.name not in TASKS:
        raise ConfigError(f"task.name must be one of {sorted(TASKS)}, got {cfg.task.name!r}")
    t, out_dir, task = cfg.train, Path(cfg.run.output_dir), TASKS[cfg.task.name]
    datasets.disable_progress_bars()  # the per-question map / filter bars are noise here
    accelerator, resume_from = open_run(cfg, find_unused_parameters=False)

    config, init_labels = _init_config(cfg)
    root, tok_path = _resolve_data(cfg, accelerator, config)
    tokenizer = load_tokenizer(tok_path, model_max_length=config.max_text_len)
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens, the model {config.vocab_size}"
        )
    d = cfg.data
    norm = dict(mean=tuple(d.mean), std=tuple(d.std))
    transforms = {
        "train": build_image_transform(
            config.image_size, d.augment, scale=tuple(d.crop_scale), **norm
        ),
        "eval": build_image_transform(config.image_size, False, **norm),
    }
    data = task.build(cfg, root, tokenizer, config.image_size, config.max_text_len, transforms,
                      init_labels)  # fmt: skip
    if d.cache_mb > 0 and not d.augment:  # the same samples every epoch: decode them once
        data.train = CachedDataset(data.train, d.cache_mb * 2**20)
    model = _build_model(cfg, task, config, data)
    if t.activation_checkpointing:
        model.onetower.activation_checkpointing_enable()
    optimizer = build_optimizer(model, t.lr, t.weight_decay, tuple(t.betas), t.eps,
                                fused=accelerator.device.type == "cuda",
                                head_prefixes=model.head_prefixes,
                                head_lr_mult=cfg.task.head_lr_mult)  # fmt: skip
    scheduler = build_scheduler(optimizer, t.warmup_steps, max(t.max_steps, 1), t.min_lr_ratio)
    if t.compile:
        model.onetower.encoder.compile()
    loader = torch.utils.data.DataLoader(
        data.train, batch_size=d.batch_size, shuffle=True, drop_last=True,
        collate_fn=data.collate, num_workers=d.num_workers,
        generator=torch.Generator().manual_seed(cfg.run.seed), persistent_workers=d.num_workers > 0,
    )  # fmt: skip
    model, optimizer = accelerator.prepare(model, optimizer)
    stream = MixedStream({"train": accelerator.prepare_data_loader(loader)}, {"train": 1.0},
                         cfg.run.seed)  # fmt: skip
    state = start_state(accelerator, cfg, resume_from, scheduler, stream)
    core = accelerator.unwrap_model(model)

    samples_per_step = d.batch_size * accelerator.num_processes * t.grad_accum
    stop_at = min(t.stop_at or t.max_steps, t.max_steps)
    bar = tqdm(total=t.max_steps, initial=state.step, disable=not accelerator.is_main_process,
               desc=cfg.run.recipe, dynamic_ncols=True)  # fmt: skip
    running = RunningLogs(samples_per_step, t.grad_accum)
    start, start_step = time.perf_counter(), state.step
    model.train()
    while state.step < stop_at:
        for micro in range(t.grad_accum):
            _, batch = stream.next(state.step * t.grad_accum + micro)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss = model(**inputs(batch)).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and t.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), t.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            running.add({"loss": loss})
        scheduler.step()
        state.step += 1
        bar.update(1)
        running.after_step(accelerator, cfg, state, scheduler, bar, out_dir,
                           lambda: _evaluate(accelerator, core, task, data, cfg, out_dir, state))  # fmt: skip
    bar.close()
    if state.step < t.max_steps:  # stopped early on purpose (train.stop_at): resumable
        return stop_early(accelerator, cfg, state)

    train_seconds = time.perf_counter() - start
    metrics = _evaluate(accelerator, core, task, data, cfg, out_dir, state)
    result = RunResult(out_dir, out_dir / "final", state.step, metrics, state.history, "")
    if accelerator.is_main_process:
        final = save_final_model(core, tokenizer, out_dir,
                                 lambda folder: _save_processor(folder, tokenizer, config, d))  # fmt: skip
        result.files["losses"] = plot_losses(
            {"loss": state.history.get("loss", [])}, out_dir / "losses.png", cfg.run.recipe
        )
        data.counter.check()
        seconds = train_seconds
        steps = state.step - start_step
        result.summary = (
            f"Fine-tuned {cfg.task.name} from {_origin(cfg)} for {steps} steps "
            f"({seconds / 60:.1f} min, {steps * samples_per_step / max(seconds, 1e-9):.0f} samples/s): "
            f"{task_summary(metrics) or 'no labelled eval split'}. Model: {final}; predictions "
            f"and metrics.json in {out_dir}. Skipped samples: {data.counter.summary()}."
        )
        dump_json(out_dir / "metrics.json", {**metrics, "steps": state.step,
                                              "train_seconds": train_seconds,
                                              "world_size": accelerator.num_processes})  # fmt: skip
        dump_json(out_dir / "history.json", state.history)
        print(result.summary)
    accelerator.end_training()
    return result


def _save_processor(folder: Path, tokenizer: Any, config: OneTowerConfig, d: DictConfig) -> None:
    """Save the processor (tokenizer + the eval image transform) with the model, so the
    folder answers questions about image files on its own."""
    processor = OneTowerProcessor.from_config(
        tokenizer, image_size=config.image_size, mean=list(d.mean), std=list(d.std),
        max_text_len=config.max_text_len,
    )  # fmt: skip
    processor.save_pretrained(str(folder))


def _evaluate(accelerator: Accelerator, core: TaskModel, task: Any, data: TaskData,
              cfg: DictConfig, out_dir: Path, state: TrainState) -> dict[str, float]:  # fmt: skip
    """Evaluate on the main process (others wait); record and log the metrics."""
    metrics: dict[str, float] = {}
    if accelerator.is_main_process:
        metrics = evaluate_task(core, task, data, cfg, out_dir, accelerator.device)
        state.record(metrics)
        accelerator.log(metrics, step=state.step)
    accelerator.wait_for_everyone()
    return metrics
