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
from pathlib import Path

from omegaconf import DictConfig
from tqdm.auto import tqdm

from onetower.data import grounding_word_ids
from onetower.data.batch_masking import step_generator
from onetower.training.build import build_composer, build_masker, build_model
from onetower.training.data import MixedStream, build_data
from onetower.training.evaluate import evaluate
from onetower.training.optim import build_optimizer, build_scheduler
from onetower.training.report import RunResult, finish_run
from onetower.training.steps import RunningLogs, open_run, start_state, stop_early


def pretrain(cfg: DictConfig) -> RunResult:
    """Run a pretraining recipe described by ``cfg`` (see :mod:`onetower.training.schema`)."""
    t, out_dir = cfg.train, Path(cfg.run.output_dir)
    accelerator, resume_from = open_run(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes

    # build
    data = build_data(cfg, accelerator)
    model = build_model(cfg, data.tokenizer)
    composer = build_composer(cfg, model)
    masker = build_masker(cfg, data.tokenizer, model, dict(composer.heads))
    # built before prepare() moves the model, so say where it will run: fused AdamW on CUDA
    fused = accelerator.device.type == "cuda"
    optimizer = build_optimizer(composer, t.lr, t.weight_decay, tuple(t.betas), t.eps, fused)
    scheduler = build_scheduler(optimizer, t.warmup_steps, t.max_steps, t.min_lr_ratio)
    if t.compile:
        model.encoder.compile()  # in place: parameter names (and checkpoints) stay the same

    # prepare (the scheduler is stepped by hand once per optimizer step, so it is registered
    # for checkpointing instead of prepared: a prepared one steps num_processes times)
    composer, optimizer = accelerator.prepare(composer, optimizer)
    loaders = {n: accelerator.prepare_data_loader(dl) for n, dl in data.loaders.items()}
    stream = MixedStream(loaders, data.ratios, cfg.run.seed)
    state = start_state(accelerator, cfg, resume_from, scheduler, stream)
    core = accelerator.unwrap_model(composer)

    # loop
    word_ids = grounding_word_ids(data.tokenizer)
    samples_per_step = cfg.data.batch_size * world * t.grad_accum
    stop_at = t.stop_at or t.max_steps
    bar = tqdm(total=t.max_steps, initial=state.step, disable=not accelerator.is_main_process,
               desc=cfg.run.recipe, dynamic_ncols=True)  # fmt: skip
    running = RunningLogs(samples_per_step, t.grad_accum)
    start, start_step = time.perf_counter(), state.step
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
            running.add(out.logs())
        scheduler.step()
        for h in core.heads.values():
            if hasattr(h, "clamp_logit_scale_"):
                h.clamp_logit_scale_()
        state.step += 1
        bar.update(1)

        running.after_step(accelerator, cfg, state, scheduler, bar, out_dir,
                           lambda: _evaluate(cfg, accelerator, core, masker, data, word_ids, state))  # fmt: skip
    bar.close()
    if state.step < t.max_steps:  # stopped early on purpose (train.stop_at): resumable
        return stop_early(accelerator, cfg, state)

    metrics = _evaluate(cfg, accelerator, core, masker, data, word_ids, state)
    train_seconds = time.perf_counter() - start
    result = finish_run(
        cfg, accelerator, core, masker, data, state, metrics, train_seconds, start_step
    )
    accelerator.end_training()
    return result


def _evaluate(cfg, accelerator, core, masker, data, word_ids, state) -> dict[str, float]:
    """Evaluate on the main process (others wait); record and log the metrics."""
    metrics: dict[str, float] = {}
    if accelerator.is_main_process:
        e = cfg.eval
        metrics = evaluate(core, masker, data.val, data.tokenizer, cfg.data.max_text_len,
                           e.max_samples, e.batch_size, word_ids, accelerator.device)  # fmt: skip
        state.record(metrics)
        accelerator.log(metrics, step=state.step)
    accelerator.wait_for_everyone()
    return metrics
