"""bf16 / fp16 (CPU autocast) for every recipe, steps skipped on a non-finite loss or gradient,
activation checkpointing and ``torch.compile``: each at toy size, through the real engine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState, PartialState
from safetensors.torch import load_file

from onetower.finetuning import FinetuneConfig, finetune
from onetower.pretraining import pretrain
from onetower.pretraining.task import PretrainTask
from onetower.training import load_config

from ..conftest import CONFIGS, debug_config

PRETRAIN = ("vilt_like", "flava_like", "m3ae_like", "beit3_like")
FINETUNE = ("finetune_vqa", "finetune_nlvr2")
ONE = ("train.max_steps=1", "eval.max_samples=8")
SHORT = ("train.max_steps=2", "train.log_every=1", "run.tracker=none")


def run(recipe: str, tmp: Path, world: Path, *overrides: str):
    """One run of ``recipe``'s debug config (accelerate's process-wide state reset first, so
    each run can pick its own precision)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    if recipe in PRETRAIN:
        return pretrain(debug_config(recipe, tmp, *SHORT, *overrides, world=world))
    argv = ["--config", str(CONFIGS / "debug" / f"{recipe}.yaml")]
    argv += [f"run.output_dir={tmp / recipe}", f"data.synthetic.root={world}", *SHORT, *overrides]
    return finetune(load_config(FinetuneConfig, argv))


def weights(result) -> dict[str, torch.Tensor]:
    return load_file(result.final_model / "model.safetensors")


@pytest.mark.parametrize("recipe", PRETRAIN + FINETUNE)
def test_bf16_and_fp16_losses_are_finite_and_close_to_fp32(recipe, tmp_path, worlds) -> None:
    world = worlds(16) if recipe in PRETRAIN else tmp_path.parent / "task_world_precision"
    losses = {}
    for precision in ("no", "bf16", "fp16"):
        result = run(
            recipe, tmp_path / precision, world, f"train.mixed_precision={precision}", *ONE
        )
        assert result.record["mixed_precision"] == precision
        assert result.record["skipped_steps"] == 0, precision
        losses[precision] = [v for _, v in result.history["loss"]]
        assert all(math.isfinite(v) for v in losses[precision]), (precision, losses)
        assert all(torch.isfinite(w).all() for w in weights(result).values())
    # the first step's loss: same weights, same batch, only the precision differs
    assert losses["bf16"][0] == pytest.approx(losses["no"][0], rel=3e-2), losses
    assert losses["fp16"][0] == pytest.approx(losses["no"][0], rel=1e-2), losses


@pytest.mark.parametrize("precision", ["no", "fp16"])
def test_a_non_finite_loss_skips_the_step(precision, tmp_path, worlds, monkeypatch) -> None:
    real_step = PretrainTask.step

    def poisoned(self, module, batch, ctx):
        out = real_step(self, module, batch, ctx)
        if ctx.step == 1:
            out.loss = out.loss * float("nan")  # NaN loss and NaN gradients
        return out

    cfg = ("train.max_steps=3", "train.save_every=2", f"train.mixed_precision={precision}")
    monkeypatch.setattr(PretrainTask, "step", poisoned)
    poisoned_run = run("vilt_like", tmp_path / "nan", worlds(16), *cfg)
    monkeypatch.setattr(PretrainTask, "step", real_step)
    assert poisoned_run.record["skipped_steps"] >= 1
    assert poisoned_run.history["skipped_steps"][-1][1] == poisoned_run.record["skipped_steps"]
    metrics = json.loads((poisoned_run.output_dir / "metrics.json").read_text())
    assert metrics["skipped_steps"] == poisoned_run.record["skipped_steps"]
    ckpt = load_file(poisoned_run.output_dir / "checkpoints" / "step_2" / "model.safetensors")
    for name, w in {**ckpt, **weights(poisoned_run)}.items():
        assert torch.isfinite(w).all(), name
    if precision == "no":  # exactly one step skipped: its update never happened
        assert poisoned_run.record["skipped_steps"] == 1
        assert [s for s, v in poisoned_run.history["loss"] if not math.isfinite(v)] == [2]


def test_activation_checkpointing_leaves_the_gradients_unchanged(tmp_path, worlds) -> None:
    plain = run("vilt_like", tmp_path / "plain", worlds(16))
    ckpt = run("vilt_like", tmp_path / "ckpt", worlds(16), "train.activation_checkpointing=true")
    a, b = weights(plain), weights(ckpt)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


def test_activation_checkpointing_in_fine_tuning(tmp_path) -> None:
    world = tmp_path / "task_world"
    plain = run("finetune_vqa", tmp_path / "plain", world)
    ckpt = run("finetune_vqa", tmp_path / "ckpt", world, "train.activation_checkpointing=true")
    a, b = weights(plain), weights(ckpt)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_compile_trains_like_eager(tmp_path, worlds) -> None:
    eager = run("vilt_like", tmp_path / "eager", worlds(16))
    compiled = run("vilt_like", tmp_path / "compiled", worlds(16), "train.compile=true")
    a, b = weights(eager), weights(compiled)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=k)
