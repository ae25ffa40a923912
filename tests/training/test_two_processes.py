"""Two CPU processes through `accelerate launch` (gloo) train like one process on the same
global batch: the same losses and weights (to float tolerance), identical on both ranks.

The claims of the README's "Processes and equivalence", one launch each: two fresh
interpreters cost most of the time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onetower.pretraining import pretrain

from ..conftest import CONFIGS, RECIPES, debug_config

# MIM with visible-only encoding at a fixed ratio: every sample has the same number of masked
# patches, so the mean of the two ranks' losses IS the global-batch loss, and DDP's gradient
# average equals the one-process gradient. (Per-rank means over unequal MLM counts would not.)
OVERRIDES = (
    "objectives.m3ae.text_weight=0",
    "train.max_steps=6",
    "train.log_every=1",
    "data.synthetic.n_train=32",
)


def launch_two(tmp_path: Path, recipe: str, world: Path, *overrides: str) -> Path:
    """Run ``recipe`` in two gloo processes; returns its output folder."""
    out = tmp_path / "two" / recipe
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(RECIPES / f"{recipe}.py"),
        "--config",
        str(CONFIGS / "debug" / f"{recipe}.yaml"),
        f"run.output_dir={out}",
        f"data.synthetic.root={world}",
        *overrides,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    record = json.loads((out / "metrics.json").read_text())
    assert record["world_size"] == 2, "accelerate launch did not start two processes"
    assert record["replicas_identical"] is True
    return out


def assert_same_run(one, out: Path) -> None:
    two = json.loads((out / "history.json").read_text())["loss"]
    ours = [v for _, v in one.history["loss"]]
    torch.testing.assert_close(
        torch.tensor([v for _, v in two]), torch.tensor(ours), rtol=1e-4, atol=1e-5
    )
    a = load_file(one.final_model / "model.safetensors")
    b = load_file(out / "final" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5, msg=k)


@pytest.mark.slow
def test_two_cpu_processes_match_one_process(tmp_path: Path, worlds) -> None:
    """m3ae_like draws nothing per slot: 2 x 8 equals one process of batch 16."""
    one = pretrain(
        debug_config(
            "m3ae_like", tmp_path / "one", *OVERRIDES, "data.batch_size=16", world=worlds(32)
        )
    )
    out = launch_two(tmp_path, "m3ae_like", worlds(32), "data.batch_size=8", *OVERRIDES)
    assert_same_run(one, out)


VILT = ("train.max_steps=4", "train.log_every=1", "data.synthetic.n_train=32")


@pytest.mark.slow
def test_vilt_two_processes_match_one_process_accumulating(tmp_path: Path, worlds) -> None:
    """vilt_like draws ITM negatives per slot among the slot's rows: 2 processes x 8 equal one
    process x 8 with train.grad_accum=2 (slot s draws the same as a rank or a micro-batch)."""
    one = pretrain(
        debug_config("vilt_like", tmp_path / "one", *VILT, "train.grad_accum=2", world=worlds(32))
    )
    out = launch_two(tmp_path, "vilt_like", worlds(32), *VILT)
    assert_same_run(one, out)
