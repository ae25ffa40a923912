"""The one training loop: every recipe (pretraining, fine-tuning) runs through :func:`train`.

Top to bottom: Accelerator -> task.build (data, model; every check) -> claim the output folder
-> optimizer, schedule -> prepare -> resume -> the loop (forward through the task, backward,
clip, step, log, evaluate, checkpoint, all visible below) -> final evaluation, run record,
final model with its card, summary.

Randomness: the task derives every draw of a step from ``(seed, step, rank)`` through its
:class:`~onetower.training.task.StepContext`; with the seedable sampler and the stream's
positions saved in each checkpoint, a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path

from accelerate.utils import set_seed
from omegaconf import DictConfig
from tqdm.auto import tqdm

from onetower.training.accelerator import make_accelerator
from onetower.training.checkpoint import claim_output_dir, resolve_resume, save_checkpoint
from onetower.training.config import flatten, save_config
from onetower.training.optim import adamw, build_scheduler
from onetower.training.plots import plot_losses
from onetower.training.record import (
    HISTORY_FILE,
    RECORD_FILE,
    RunResult,
    dump_json,
    replicas_identical,
    run_record,
    save_final,
)
from onetower.training.state import RunningLogs, Stream, TrainState
from onetower.training.task import RunInfo, StepContext, Task


def train(cfg: DictConfig, task: Task) -> RunResult:
    """Run ``task`` as ``cfg`` says (its ``run`` and ``train`` sections are the engine's)."""
    t, out_dir = cfg.train, Path(cfg.run.output_dir)
    accelerator = make_accelerator(cfg, task.find_unused_parameters)
    rank, world = accelerator.process_index, accelerator.num_processes
    set_seed(cfg.run.seed)
    resume_from = resolve_resume(out_dir, cfg.run.resume)

    # build everything that can fail before the output folder is claimed
    built = task.build(accelerator)
    if accelerator.is_main_process:
        claim_output_dir(out_dir, cfg.run.recipe, cfg.run.resume is not None, cfg.run.overwrite)
        save_config(cfg, out_dir / "config.yaml")
    accelerator.wait_for_everyone()

    # built before prepare() moves the model, so say where it will run: fused AdamW on CUDA
    fused = accelerator.device.type == "cuda"
    optimizer = adamw(built.param_groups, t.lr, tuple(t.betas), t.eps, fused)
    scheduler = build_scheduler(optimizer, t.warmup_steps, max(t.max_steps, 1), t.min_lr_ratio)
    # the scheduler is stepped by hand once per optimizer step, so it is registered for
    # checkpointing instead of prepared (a prepared one steps num_processes times)
    module, optimizer = accelerator.prepare(built.module, optimizer)
    loaders = {n: accelerator.prepare_data_loader(dl) for n, dl in built.loaders.items()}
    stream = Stream(loaders, built.ratios, cfg.run.seed)
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, stream, state)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        accelerator.print(f"resumed from {resume_from} at step {state.step}")
    if cfg.run.tracker != "none":
        accelerator.init_trackers(cfg.run.recipe, config=flatten(cfg))
    core = accelerator.unwrap_model(module)

    def evaluate() -> dict[str, float]:
        metrics = task.evaluate(core, accelerator, state.step)
        if accelerator.is_main_process and metrics:
            state.record(metrics)
            accelerator.log(metrics, step=state.step)
        accelerator.wait_for_everyone()
        return metrics

    # the loop
    samples_per_step = built.batch_size * world * t.grad_accum
    stop_at = min(t.stop_at or t.max_steps, t.max_steps)
    bar = tqdm(
        total=t.max_steps,
        initial=state.step,
        disable=not accelerator.is_main_process,
        desc=cfg.run.recipe,
        dynamic_ncols=True,
    )
    running = RunningLogs(samples_per_step, t.grad_accum)
    start, start_step = time.perf_counter(), state.step
    module.train()
    while state.step < stop_at:
        for micro in range(t.grad_accum):
            micro_step = state.step * t.grad_accum + micro
            source, batch = stream.next(micro_step)
            ctx = StepContext(
                state.step,
                micro,
                micro_step,
                rank,
                world,
                micro * world + rank,
                t.grad_accum * world,
                cfg.run.seed,
                source,
            )
            with accelerator.accumulate(module):
                with accelerator.autocast():
                    out = task.step(module, batch, ctx)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and t.grad_clip > 0:
                    accelerator.clip_grad_norm_(module.parameters(), t.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            running.add({"loss": out.loss.detach(), **out.logs})
        scheduler.step()
        task.after_optimizer_step(core)
        state.step += 1
        bar.update(1)

        if state.step % t.log_every == 0 or state.step == t.max_steps:  # log
            logs = running.flush(accelerator, scheduler.get_last_lr()[0])
            state.record(logs)
            accelerator.log(logs, step=state.step)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", sps=f"{logs['samples_per_s']:.0f}")
        if t.eval_every and state.step % t.eval_every == 0 and state.step < t.max_steps:
            evaluate()  # the run ends with an evaluation anyway
        if t.save_every and state.step % t.save_every == 0:  # checkpoint
            save_checkpoint(accelerator, out_dir, state.step, t.keep_last)
    bar.close()

    if state.step < t.max_steps:  # stopped early on purpose (train.stop_at): resumable
        save_checkpoint(accelerator, out_dir, state.step, t.keep_last)
        accelerator.end_training()
        return RunResult(
            out_dir, out_dir / "checkpoints", state.step, {}, state.history, "stopped early"
        )

    # the end: evaluate, record, save, summarise
    seconds = time.perf_counter() - start
    metrics = evaluate()
    identical = replicas_identical(accelerator, module)
    result = RunResult(out_dir, out_dir / "final", state.step, metrics, state.history, "")
    if accelerator.is_main_process:
        rates = [v for _, v in state.history.get("samples_per_s", [])]
        info = RunInfo(
            output_dir=out_dir,
            final_dir=out_dir / "final",
            steps=state.step,
            steps_this_run=state.step - start_step,
            seconds=seconds,
            samples_per_s=sum(rates) / max(len(rates), 1),
            metrics=metrics,
            history=state.history,
            files={},
        )
        info.files["losses"] = plot_losses(state.history, out_dir / "losses.png", cfg.run.recipe)
        part = task.finish(core, accelerator, info)
        facts = {
            "steps": state.step,
            "train_seconds": seconds,
            "samples_per_s": info.samples_per_s,
            "replicas_identical": identical,
            "metrics": metrics,
        }
        result.record = run_record(cfg, task.name, accelerator, facts, part)
        dump_json(out_dir / RECORD_FILE, result.record)
        dump_json(out_dir / HISTORY_FILE, state.history)
        save_final(out_dir, lambda folder: task.save(core, folder))
        result.summary, result.files = result.record.get("summary", ""), info.files
        accelerator.print("\n" + result.summary)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result
