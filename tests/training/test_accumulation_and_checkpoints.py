"""Gradient accumulation equals the large batch; an interrupted save never costs the previous
checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onetower.pretraining import pretrain
from onetower.training import checkpoint as ckpt_mod
from onetower.training import list_checkpoints, resolve_resume

from ..conftest import debug_config

# MIM only at a fixed ratio: every micro-batch has the same number of targets, so the mean of
# the two micro-batch losses is exactly the loss of the whole batch.
MIM_ONLY = ("objectives.m3ae.text_weight=0", "train.max_steps=4", "data.synthetic.n_train=16")


def test_two_micro_batches_equal_one_batch(tmp_path: Path, worlds) -> None:
    big = pretrain(
        debug_config("m3ae_like", tmp_path / "a", *MIM_ONLY, "data.batch_size=8", world=worlds(16))
    )
    acc = pretrain(
        debug_config(
            "m3ae_like",
            tmp_path / "b",
            *MIM_ONLY,
            "data.batch_size=4",
            "train.grad_accum=2",
            world=worlds(16),
        )
    )
    a = load_file(big.final_model / "model.safetensors")
    b = load_file(acc.final_model / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)


def test_a_save_killed_midway_leaves_the_last_checkpoint(
    tmp_path: Path, worlds, monkeypatch
) -> None:
    cfg = ("train.max_steps=6", "train.save_every=2", "train.stop_at=4")
    first = pretrain(debug_config("vilt_like", tmp_path, *cfg, world=worlds(16)))
    assert [c.name for c in list_checkpoints(first.output_dir)] == ["step_2", "step_4"]

    real_save = ckpt_mod.save_checkpoint

    def dies_while_saving(accelerator, output_dir, step, keep, optimizer=None):
        if step == 6:  # write part of the state, then the process "dies"
            tmp = Path(output_dir) / "checkpoints" / f".step_{step}.tmp"
            tmp.mkdir(parents=True)
            (tmp / "model.safetensors").write_bytes(b"half a file")
            raise KeyboardInterrupt
        return real_save(accelerator, output_dir, step, keep, optimizer)

    monkeypatch.setattr("onetower.training.engine.save_checkpoint", dies_while_saving)
    with pytest.raises(KeyboardInterrupt):
        pretrain(
            debug_config(
                "vilt_like",
                tmp_path,
                *cfg[:2],
                "train.save_every=6",
                "run.resume=latest",
                world=worlds(16),
            )
        )
    # the half-written folder is never mistaken for a checkpoint; the last good one resumes
    assert resolve_resume(first.output_dir, "latest").name == "step_4"
    monkeypatch.undo()
    done = pretrain(
        debug_config("vilt_like", tmp_path, *cfg[:2], "run.resume=latest", world=worlds(16))
    )
    assert done.steps == 6 and (done.final_model / "model.safetensors").is_file()
