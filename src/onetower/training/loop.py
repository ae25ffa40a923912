"""The pretraining loop every recipe runs.

Top to bottom: config -> Accelerator -> build (data, model, objectives, optimiser) -> prepare
-> resume -> explicit loop (mask, forward all views and heads, backward, clip, step, log,
evaluate, checkpoint) -> final model, plots and a summary.

Every random choice of a step is a function of ``(seed, step, rank)``: the source of the
batch, its MLM / MIM masks (drawn for the global batch, so 1 or N processes, with or without
gradient accumulation, see the same masks), ITM negatives and patch dropout. With the seedable sampler and the per-source
positions saved in each checkpoint, a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed
from omegaconf import DictConfig
from tqdm.auto import tqdm

from onetower.data import colour_token_ids
from onetower.data.batch_masking import step_generator
from onetower.training.build import build_composer, build_masker, build_model, make_accelerator
from onetower.training.checkpoint import claim_output_dir, resolve_resume, save_checkpoint
from onetower.training.config import flatten, save_config
from onetower.training.data import MixedStream, build_data
from onetower.training.evaluate import evaluate
from onetower.training.optim import build_optimizer, build_scheduler
from onetower.training.report import RunResult, finish_run


@dataclass
class TrainState:
    """Loop state saved in every checkpoint: the optimizer step and the logged history."""

    step: int = 0
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {"step": self.step, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.history = {k: [tuple(p) for p in v] for k, v in state["history"].items()}

    def record(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.history.setdefault(k, []).append((self.step, float(v)))


def pretrain(cfg: DictConfig) -> RunResult:
    """Run a pretraining recipe described by ``cfg`` (see :mod:`onetower.training.schema`)."""
    t, out_dir = cfg.train, Path(cfg.run.output_dir)
    accelerator = make_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    set_seed(cfg.run.seed)
    resume_from = resolve_resume(out_dir, cfg.run.resume)
    if accelerator.is_main_process:
        claim_output_dir(out_dir, cfg.run.recipe, cfg.run.resume is not None, cfg.run.overwrite)
        save_config(cfg, out_dir / "config.yaml")
    accelerator.wait_for_everyone()

    # build
    data = build_data(cfg, accelerator)
    model = build_model(cfg, data.tokenizer)
    composer = build_composer(cfg, model)
    masker = build_masker(cfg, data.tokenizer, model, dict(composer.heads))
    optimizer = build_optimizer(composer, t.lr, t.weight_decay, tuple(t.betas), t.eps)
    scheduler = build_scheduler(optimizer, t.warmup_steps, t.max_steps, t.min_lr_ratio)
    if t.compile:
        model.encoder.compile()  # in place: parameter names (and checkpoints) stay the same

    # prepare (the scheduler is stepped by hand once per optimizer step, so it is registered
    # for checkpointing instead of prepared: a prepared one steps num_processes times)
    composer, optimizer = accelerator.prepare(composer, optimizer)
    loaders = {n: accelerator.prepare_data_loader(dl) for n, dl in data.loaders.items()}
    stream = MixedStream(loaders, data.ratios, cfg.run.seed)
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, stream, state)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        accelerator.print(f"resumed from {resume_from} at step {state.step}")
    core = accelerator.unwrap_model(composer)
    if cfg.run.tracker != "none":
        accelerator.init_trackers(cfg.run.recipe, config=flatten(cfg))

    # loop
    colour_ids = colour_token_ids(data.tokenizer)
    samples_per_step = cfg.data.batch_size * world * t.grad_accum
    stop_at = t.stop_at or t.max_steps
    bar = tqdm(total=t.max_steps, initial=state.step, disable=not accelerator.is_main_process,
               desc=cfg.run.recipe, dynamic_ncols=True)  # fmt: skip
    running: dict[str, tuple[torch.Tensor, int]] = {}  # name -> (sum, micro-steps)
    n_running, tick, start, start_step = 0, time.perf_counter(), time.perf_counter(), state.step
    composer.train()
    while state.step < min(stop_at, t.max_steps):
        for micro in range(t.grad_accum):
            micro_step = state.step * t.grad_accum + micro
            _, batch = stream.next(micro_step)
            # masks are drawn for the whole optimizer step's batch (every micro-batch of every
            # process) and sliced, so 1 process, N processes and accumulation see the same masks
            slot, slots = micro * world + rank, t.grad_accum * world
            batch = masker(batch, step_generator(cfg.run.seed, state.step), slot, slots)
            # ITM negatives and patch dropout: per (step, rank), so a resume redraws them
            heads_gen = step_generator(cfg.run.seed + 1, micro_step, rank)
            with accelerator.accumulate(composer):
                with accelerator.autocast():
                    out = composer(batch, generator=heads_gen)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and t.grad_clip > 0:
                    accelerator.clip_grad_norm_(composer.parameters(), t.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in out.logs().items():  # a head logs only on the micro-steps it ran
                total, count = running.get(k, (0.0, 0))
                running[k] = (total + v.float(), count + 1)
            n_running += 1
        scheduler.step()
        for h in core.heads.values():
            if hasattr(h, "clamp_logit_scale_"):
                h.clamp_logit_scale_()
        state.step += 1
        bar.update(1)

        if state.step % t.log_every == 0 or state.step == t.max_steps:
            logs = {
                k: float(accelerator.reduce(v / n, "mean")) for k, (v, n) in sorted(running.items())
            }
            now = time.perf_counter()
            logs["samples_per_s"] = samples_per_step * (n_running / t.grad_accum) / (now - tick)
            logs["lr"] = scheduler.get_last_lr()[0]
            running, n_running, tick = {}, 0, now
            state.record(logs)
            accelerator.log(logs, step=state.step)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", sps=f"{logs['samples_per_s']:.0f}")
        if t.eval_every and state.step % t.eval_every == 0 and state.step < t.max_steps:
            _evaluate(cfg, accelerator, core, masker, data, colour_ids, state)
        if t.save_every and state.step % t.save_every == 0:
            save_checkpoint(accelerator, out_dir, state.step, t.keep_last)
    bar.close()
    if state.step < t.max_steps:  # stopped early on purpose (train.stop_at): resumable
        save_checkpoint(accelerator, out_dir, state.step, t.keep_last)
        accelerator.end_training()
        return RunResult(
            out_dir, out_dir / "checkpoints", state.step, {}, state.history, "stopped early"
        )

    metrics = _evaluate(cfg, accelerator, core, masker, data, colour_ids, state)
    train_seconds = time.perf_counter() - start
    result = finish_run(
        cfg, accelerator, core, masker, data, state, metrics, train_seconds, start_step
    )
    accelerator.end_training()
    return result


def _evaluate(cfg, accelerator, core, masker, data, colour_ids, state) -> dict[str, float]:
    """Evaluate on the main process (others wait); record and log the metrics."""
    metrics: dict[str, float] = {}
    if accelerator.is_main_process:
        e = cfg.eval
        metrics = evaluate(core, masker, data.val, data.tokenizer, cfg.data.max_text_len,
                           e.max_samples, e.batch_size, colour_ids, accelerator.device)  # fmt: skip
        state.record(metrics)
        accelerator.log(metrics, step=state.step)
    accelerator.wait_for_everyone()
    return metrics
