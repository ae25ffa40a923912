"""The one training loop: every recipe (pretraining, fine-tuning) runs through :func:`train`.

Top to bottom: Accelerator -> task.build (data, model; every check) -> claim the output folder
-> optimizer, schedule -> prepare -> resume -> the loop (forward through the task, backward,
clip, step, log, evaluate, checkpoint, all visible below) -> final evaluation, run record,
final model with its card, summary.

Interruption: SIGINT / SIGTERM stop the loop after the current step with a checkpoint on every
rank (:mod:`onetower.training.interrupt`). Resuming a finished run does nothing and says so,
unless ``train.max_steps`` is raised.

Randomness: the task derives every draw of a step from ``(seed, step, slot)`` through its
:class:`~onetower.training.task.StepContext`; with the seedable sampler and the stream's
positions saved in each checkpoint, a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from omegaconf import DictConfig
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm

from onetower.training.accelerator import make_accelerator
from onetower.training.checkpoint import (
    checkpoint_step,
    claim_output_dir,
    resolve_resume,
    save_checkpoint,
)
from onetower.training.config import flatten, save_config
from onetower.training.interrupt import RunInterrupted, StopSignals
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
from onetower.training.state import RunningLogs, Stream, TrainState, prepare_loader
from onetower.training.task import RunInfo, StepContext, Task


def train(cfg: DictConfig, task: Task) -> RunResult:
    """Run ``task`` as ``cfg`` says (its ``run`` and ``train`` sections are the engine's)."""
    t, out_dir = cfg.train, Path(cfg.run.output_dir)
    accelerator = make_accelerator(cfg, task.find_unused_parameters)
    rank, world = accelerator.process_index, accelerator.num_processes
    set_seed(cfg.run.seed)
    resume_from = resolve_resume(out_dir, cfg.run.resume)
    if resume_from is not None and (done := finished(out_dir, resume_from, t.max_steps)):
        accelerator.print(done.summary)
        return done

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
    # sharded parameters (FSDP): evaluation, the final model and the task's finish read a full
    # copy on the main process, loaded from the gathered state dict (see `full_view`); on one
    # process too: FSDP2 still holds DTensors whose unsharded storage it frees after a pass
    sharded = accelerator.distributed_type == DistributedType.FSDP
    full_copy = copy.deepcopy(built.module) if sharded and accelerator.is_main_process else None
    module, optimizer = accelerator.prepare(built.module, optimizer)
    loaders = {n: prepare_loader(accelerator, dl) for n, dl in built.loaders.items()}
    stream = Stream(loaders, built.ratios, cfg.run.seed)
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, stream, state)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        accelerator.print(f"resumed from {resume_from} at step {state.step}")
    if cfg.run.tracker != "none":
        accelerator.init_trackers(cfg.run.recipe, config=flatten(cfg))
    core = accelerator.unwrap_model(module)

    def full_view() -> torch.nn.Module:
        """The module to evaluate and save: the trained one, or under sharding its full copy
        on the main process (every rank takes part in the gather; the others get ``core``,
        which the tasks' main-process-only evaluation and saving never read)."""
        if not sharded:
            return core
        state_dict = accelerator.get_state_dict(module)  # full tensors on the main process
        if full_copy is None:
            return core
        full_copy.load_state_dict(state_dict)
        return full_copy.to(accelerator.device)

    def evaluate() -> dict[str, float]:
        metrics = task.evaluate(full_view(), accelerator, state.step)
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
    last_save = time.monotonic()
    module.train()
    with StopSignals() as signals:
        while state.step < stop_at:
            finite, skipped = None, False
            for micro in range(t.grad_accum):
                micro_step = state.step * t.grad_accum + micro
                source, batch = stream.next(micro_step)
                ctx = StepContext(
                    step=state.step,
                    micro=micro,
                    micro_step=micro_step,
                    rank=rank,
                    world_size=world,
                    slot=micro * world + rank,
                    slots=t.grad_accum * world,
                    seed=cfg.run.seed,
                    source=source,
                )
                with accelerator.accumulate(module):
                    with accelerator.autocast():
                        out = task.step(module, batch, ctx)
                    accelerator.backward(out.loss)
                    ok = torch.isfinite(out.loss.detach())
                    finite = ok if finite is None else finite & ok
                    if accelerator.sync_gradients:
                        skipped = optimizer_step(accelerator, module, optimizer, t, finite)
                running.add({"loss": out.loss.detach(), **out.logs})
            scheduler.step()  # the schedule follows the step count, skipped steps included
            if skipped:
                state.skipped_steps += 1
                accelerator.print(
                    f"step {state.step + 1}: non-finite loss or gradient, optimizer step "
                    f"skipped ({state.skipped_steps} so far)"
                )
            else:
                task.after_optimizer_step(core)
            state.step += 1
            bar.update(1)

            if state.step % t.log_every == 0 or state.step == t.max_steps:  # log
                logs = running.flush(accelerator, scheduler.get_last_lr()[0])
                logs["skipped_steps"] = state.skipped_steps
                state.record(logs)
                accelerator.log(logs, step=state.step)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", sps=f"{logs['samples_per_s']:.0f}")
            if t.eval_every and state.step % t.eval_every == 0 and state.step < t.max_steps:
                evaluate()  # the run ends with an evaluation anyway
            # checkpoint: every save_every steps, at the end, after save_every_minutes, or when
            # a signal asks the run to stop (on any rank: every rank must take part)
            minutes = (time.monotonic() - last_save) / 60
            timed = 0 < t.save_every_minutes < minutes
            stop, timed = agree(accelerator, signals.received is not None, timed)
            every = t.save_every and state.step % t.save_every == 0
            if every or state.step == stop_at or timed or stop:
                checkpoint = save_checkpoint(
                    accelerator, out_dir, state.step, t.keep_last, optimizer
                )
                last_save = time.monotonic()
            if stop:
                bar.close()
                accelerator.end_training()
                raise RunInterrupted(state.step, checkpoint, signals.received or "a signal")
    bar.close()

    if state.step < t.max_steps:  # stopped early on purpose (train.stop_at): resumable
        accelerator.end_training()
        return RunResult(
            out_dir, out_dir / "checkpoints", state.step, {}, state.history, "stopped early"
        )

    # the end: evaluate, record, save, summarise
    seconds = time.perf_counter() - start
    metrics = evaluate()
    identical = replicas_identical(accelerator, module)
    final = full_view()
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
        part = task.finish(final, accelerator, info)
        facts = {
            "steps": state.step,
            "train_seconds": seconds,
            "samples_per_s": info.samples_per_s,
            "replicas_identical": identical,
            # whether the parameters were actually sharded (FSDP2 DTensors), not only configured
            "sharded_parameters": any(isinstance(p, DTensor) for p in module.parameters()),
            "skipped_steps": state.skipped_steps,
            "metrics": metrics,
        }
        result.record = run_record(cfg, task.name, accelerator, facts, part)
        dump_json(out_dir / RECORD_FILE, result.record)
        dump_json(out_dir / HISTORY_FILE, state.history)
        save_final(out_dir, lambda folder: task.save(final, folder))
        result.summary, result.files = result.record.get("summary", ""), info.files
        accelerator.print("\n" + result.summary)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def optimizer_step(
    accelerator: Accelerator,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    t: DictConfig,
    finite_loss: torch.Tensor,
) -> bool:
    """Clip, then step the optimizer unless the loss or the gradient is not finite; the
    gradients are cleared either way. Returns whether the step was skipped (the same answer
    on every process, so the replicas stay identical).

    fp16: accelerate's gradient scaler unscales the gradients in the clip and itself skips a
    step whose gradients overflowed (lowering the scale); such a step counts as skipped too.
    Every other precision: the total gradient norm (all-reduced by DDP / FSDP already) and the
    loss of every process decide; one scalar crosses to the host per optimizer step.
    """
    # the clip computes the total norm; max_norm=inf only measures it (the factor clamps to 1)
    norm = accelerator.clip_grad_norm_(
        module.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf")
    )
    if accelerator.scaler is not None:  # fp16
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return bool(accelerator.optimizer_step_was_skipped)
    norm = norm.full_tensor() if isinstance(norm, DTensor) else torch.as_tensor(norm)  # FSDP2
    bad = (~finite_loss).float() + (~torch.isfinite(norm)).float()
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad.to(accelerator.device), reduction="sum")
    skipped = bool(bad.item() > 0)
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return skipped


def agree(accelerator: Accelerator, *flags: bool) -> tuple[bool, ...]:
    """Each flag, true on every process when it is true on any (one process: as given)."""
    if accelerator.num_processes == 1:
        return flags
    votes = torch.tensor([int(f) for f in flags], device=accelerator.device)
    return tuple(bool(v) for v in accelerator.reduce(votes, reduction="sum").tolist())


def finished(out_dir: Path, checkpoint: Path, max_steps: int) -> RunResult | None:
    """The result of a run that already reached ``max_steps`` (resuming it has nothing to do),
    or None when it has steps left."""
    step, record_path = checkpoint_step(checkpoint), out_dir / RECORD_FILE
    if step < max_steps or not (out_dir / "final").is_dir() or not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    history_path = out_dir / HISTORY_FILE
    history = json.loads(history_path.read_text()) if history_path.is_file() else {}
    summary = (
        f"{out_dir} already finished at step {step} (train.max_steps={max_steps}): nothing to "
        f"do; its model is {out_dir / 'final'}. Give a larger train.max_steps to train on."
    )
    metrics = record.get("metrics", {})
    return RunResult(out_dir, out_dir / "final", step, metrics, history, summary, record=record)
