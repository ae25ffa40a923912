"""Kill-and-resume: a run stopped after step k and resumed ends bit-identical to an
uninterrupted run (CPU), and checkpoints are written atomically and rotated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onetower.pretraining import pretrain
from onetower.training import list_checkpoints

from ..conftest import debug_config

# mixed sources (text-only batches too), ITM negatives and MLM masks all in play
COMMON = (
    "train.max_steps=8",
    "train.save_every=3",
    "train.keep_last=2",
    "train.log_every=1",
    "data.ratios.texts=0.5",
    "data.synthetic.n_train=24",
)


@pytest.mark.parametrize("recipe", ["vilt_like", "flava_like"])
def test_resumed_run_is_bit_identical(recipe: str, tmp_path: Path, worlds) -> None:
    straight = pretrain(debug_config(recipe, tmp_path / "a", *COMMON, world=worlds(24)))

    stopped = pretrain(
        debug_config(recipe, tmp_path / "b", *COMMON, "train.stop_at=4", world=worlds(24))
    )
    assert stopped.steps == 4 and stopped.summary == "stopped early"
    ckpts = list_checkpoints(stopped.output_dir)
    assert [c.name for c in ckpts] == ["step_3", "step_4"]  # keep_last=2 pruned nothing yet
    assert not list((stopped.output_dir / "checkpoints").glob(".*tmp"))

    resumed = pretrain(
        debug_config(recipe, tmp_path / "b", *COMMON, "run.resume=latest", world=worlds(24))
    )
    assert resumed.steps == 8
    a = load_file(straight.final_model / "model.safetensors")
    b = load_file(resumed.final_model / "model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed weights differ: {different[:5]}"
    # the history continues where it stopped: identical losses at every logged step
    assert straight.history["loss"] == resumed.history["loss"]
    # rotation: only the last two complete checkpoints remain, the end of training's included
    assert [c.name for c in list_checkpoints(resumed.output_dir)] == ["step_6", "step_8"]
