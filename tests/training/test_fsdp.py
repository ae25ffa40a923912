"""FSDP2 with two CPU (gloo) processes: the parameters are really sharded (DTensors, not the
plain DDP accelerate 1.15 silently falls back to on CPU), the run ends with a normal
save_pretrained folder that AutoModel loads, and the same weights as one process, also when
stopped halfway and resumed from the sharded checkpoint (m3ae_like's pooler never gets a
gradient: its optimizer state is filled in before each save, or torch DCP misses it on load)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

import onetower  # noqa: F401  (registers the Auto classes)
from onetower.pretraining import pretrain

from ..conftest import CONFIGS, RECIPES, debug_config
from .test_two_processes import OVERRIDES

#: what `accelerate launch --config_file recipes/accelerate/fsdp2.yaml` sets, given to torchrun
FSDP2_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "Block",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
    "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
}


def launch_fsdp(out: Path, world: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **FSDP2_ENV, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += [str(RECIPES / "m3ae_like.py"), "--config", str(CONFIGS / "debug" / "m3ae_like.yaml")]
    cmd += [f"run.output_dir={out}", f"data.synthetic.root={world}", "data.batch_size=8"]
    cmd += ["run.cpu=true", *OVERRIDES, *overrides]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_resumes_and_finishes_like_one_process(
    tmp_path: Path, worlds
) -> None:
    one = pretrain(
        debug_config(
            "m3ae_like", tmp_path / "one", *OVERRIDES, "data.batch_size=16", world=worlds(32)
        )
    )
    out = tmp_path / "fsdp" / "m3ae_like"
    done = launch_fsdp(out, worlds(32), "train.stop_at=3")
    assert done.returncode == 0, done.stderr[-4000:]
    checkpoint = out / "checkpoints" / "step_3"
    assert (checkpoint / "COMPLETE").is_file() and not (out / "final").exists()
    done = launch_fsdp(out, worlds(32), "run.resume=latest")
    assert done.returncode == 0, done.stderr[-4000:]

    record = json.loads((out / "metrics.json").read_text())
    assert record["world_size"] == 2 and record["distributed_type"] == "FSDP", record
    assert record["sharded_parameters"] is True, "FSDP did not engage (plain DDP?)"
    assert record["replicas_identical"] is True
    assert record["metrics"], "no evaluation under sharding"
    losses = [v for _, v in json.loads((out / "history.json").read_text())["loss"]]
    ours = [v for _, v in one.history["loss"]]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ours), rtol=1e-4, atol=1e-5)
    a = load_file(one.final_model / "model.safetensors")
    b = load_file(out / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5, msg=k)
    model = AutoModel.from_pretrained(out / "final")
    assert type(model).__name__ == "OneTowerModel"
