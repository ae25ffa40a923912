"""Interruption with real signals: SIGINT (Ctrl-C, to the whole process group as a terminal
sends it) and SIGTERM (a cluster's preemption notice) stop a run after the current step with a
checkpoint on every rank and exit status 75; resumed, it ends bit-identical to a run that was
never interrupted. One process and two (``accelerate launch``, gloo)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onetower.training import list_checkpoints
from onetower.training.interrupt import EXIT_INTERRUPTED

from ..conftest import CONFIGS, RECIPES

STEPS = 60
OVERRIDES = (
    f"train.max_steps={STEPS}",
    "train.log_every=1",
    "train.save_every=0",
    "data.synthetic.n_train=32",
)
ENV = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def command(processes: int, out: Path, world: Path, *extra: str) -> list[str]:
    recipe = [str(RECIPES / "m3ae_like.py"), "--config", str(CONFIGS / "debug" / "m3ae_like.yaml")]
    args = [*recipe, f"run.output_dir={out}", f"data.synthetic.root={world}", *OVERRIDES, *extra]
    if processes == 1:
        return [sys.executable, *args]
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1"]
    launch += ["--num_processes", str(processes), "--mixed_precision", "no"]
    return [sys.executable, *launch, "--dynamo_backend", "no", *args, "data.batch_size=4"]


def run(cmd: list[str], log: Path) -> subprocess.CompletedProcess:
    with open(log, "w") as f:
        return subprocess.run(cmd, env=ENV, stdout=f, stderr=subprocess.STDOUT, timeout=600)


def interrupt(cmd: list[str], log: Path, sig: signal.Signals, after_step: int = 3) -> int:
    """Start ``cmd`` in a process group of its own, send ``sig`` to the group once the progress
    bar shows ``after_step`` steps, return the exit status."""
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, env=ENV, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            done = [int(n) for n in re.findall(rf"(\d+)/{STEPS}", log.read_text(errors="ignore"))]
            if done and max(done) >= after_step:
                os.killpg(proc.pid, sig)
                break
            time.sleep(0.05)
        return proc.wait(timeout=300)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_signals_stop_with_a_checkpoint_and_resume_bit_identical(processes, tmp_path, worlds):
    world = worlds(32)
    straight = tmp_path / "straight"
    done = run(command(processes, straight, world), tmp_path / "straight.log")
    assert done.returncode == 0, (tmp_path / "straight.log").read_text()[-3000:]
    for sig in (signal.SIGTERM, signal.SIGINT):
        out, log = tmp_path / sig.name, tmp_path / f"{sig.name}.log"
        status = interrupt(command(processes, out, world), log, sig)
        text = log.read_text(errors="ignore")
        ckpts = list_checkpoints(out)
        assert len(ckpts) == 1 and 3 <= int(ckpts[0].name[5:]) < STEPS, text[-3000:]
        assert f"{sig.name}: stopping after this step" in text
        assert "run.resume=latest" in text and not (out / "final").exists()
        if processes == 1:  # the launcher reports its workers' failure its own way
            assert status == EXIT_INTERRUPTED, text[-3000:]
        else:
            assert status != 0
        resumed = run(command(processes, out, world, "run.resume=latest"), log)
        assert resumed.returncode == 0, log.read_text()[-3000:]
        a, b = weights(straight), weights(out)
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{sig.name}, {processes} process(es): {different[:5]} differ"
