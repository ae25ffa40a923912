"""Each recipe runs end to end on its debug config, in-process, and learns its fixed batch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from onetower import OneTowerModel
from onetower.pretraining import pretrain

from ..conftest import CONFIGS, debug_config


@pytest.mark.parametrize("recipe", ["flava_like", "m3ae_like", "beit3_like", "vilt_like"])
def test_recipe_runs_and_loss_decreases(recipe: str, tmp_path: Path, worlds) -> None:
    # 8 training pairs and batch 8: every step sees the same 8 pairs (a fixed batch)
    cfg = debug_config(
        recipe,
        tmp_path,
        "data.synthetic.n_train=8",
        "train.log_every=1",
        "data.ratios.texts=0",
        "data.ratios.images=0",
        world=worlds(8),
    )
    result = pretrain(cfg)
    losses = [v for _, v in result.history["loss"]]
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, f"{recipe}: loss {first:.3f} -> {last:.3f}"

    out = result.output_dir
    assert (out / "config.yaml").is_file() and (out / "losses.png").stat().st_size > 1000
    record = json.loads((out / "metrics.json").read_text())
    assert record["world_size"] == 1 and record["replicas_identical"] is True
    assert result.summary.startswith(recipe) and str(result.final_model) in result.summary
    model = OneTowerModel.from_pretrained(result.final_model)
    tokenizer = AutoTokenizer.from_pretrained(result.final_model)  # saved beside the model
    assert len(tokenizer) <= model.config.vocab_size
    if "mim" in cfg.objectives:
        assert (out / "reconstructions.png").is_file()
    if "contrastive" in cfg.objectives:
        assert 0 <= result.metrics["eval/i2t_r1"] <= 100
    for group in cfg.eval.probe_words:
        for image in ("with_image", "blank_image"):
            assert 0 <= result.metrics[f"eval/{group}_mlm_acc_{image}"] <= 100
        assert "shape words predicted by MLM" in result.summary
    # the final model is the trained encoder
    x = tokenizer(["a small red circle"], return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(input_ids=x).pooler_output).all()


def test_demo_probe_words_are_the_worlds():
    """The main job's grounding probe names the synthetic world's colour and shape words (the
    world lives in onetower.data; the engine and evaluation know no world)."""
    from omegaconf import OmegaConf

    from onetower.data.world import COLOURS, SHAPES

    for path in (CONFIGS / "flava_like.yaml", CONFIGS / "debug" / "flava_like.yaml"):
        probe = OmegaConf.load(path).eval.probe_words
        assert list(probe.colour) == list(COLOURS) and list(probe.shape) == list(SHAPES)


def test_named_size_takes_the_data_image_size(tmp_path: Path) -> None:
    """model.size=small (64 px) with data.image_size=32: the model follows the data (the named
    size never overrides the data's sizes, as the benchmarks' matched sizes rely on)."""
    from onetower.data import train_wordpiece_tokenizer
    from onetower.pretraining.build import build_model

    cfg = debug_config("vilt_like", tmp_path, "model.size=small", "data.image_size=32")
    tok = train_wordpiece_tokenizer(["a red circle left of a blue square"], vocab_size=512)
    c = build_model(cfg, tok).config
    assert (c.image_size, c.hidden_size) == (32, 256), (c.image_size, c.hidden_size)
