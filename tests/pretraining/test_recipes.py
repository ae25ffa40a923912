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


def test_continue_from_a_saved_run_with_the_recipe_as_written(tmp_path: Path, worlds) -> None:
    """model.init of a saved run under the recipe's own model fields: fields that repeat the
    saved config are accepted, one that differs is named with both values; the run continues
    with the tokenizer saved beside the model, and a model that saved none whose vocabulary
    the world's tokenizer does not fit is refused."""
    import shutil

    from onetower.training.config import ConfigError

    short = ("data.synthetic.n_train=8", "train.max_steps=2", "train.log_every=1")
    first = pretrain(debug_config("flava_like", tmp_path, *short, world=worlds(8)))
    final = first.output_dir / "final"
    tokenizer = AutoTokenizer.from_pretrained(str(final))
    tokenizer.add_tokens(["zzzmarker"])  # one token more than the world's
    mine = tmp_path / "mine"
    shutil.copytree(final, mine)
    tokenizer.save_pretrained(str(mine))
    model = OneTowerModel.from_pretrained(str(mine))
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(str(mine))

    # the saved heads predict the old vocabulary: they start fresh
    fresh_heads = "model.init_heads=none"
    again = pretrain(
        debug_config(
            "flava_like", tmp_path / "b", *short, f"model.init={mine}", fresh_heads, world=worlds(8)
        )
    )
    assert (again.output_dir / "final" / "tokenizer.json").is_file()
    saved = AutoTokenizer.from_pretrained(str(again.output_dir / "final"))
    assert len(saved) == len(tokenizer)  # the init folder's tokenizer, not the world's

    with pytest.raises(ConfigError, match=r"hidden_size 64 \(asked 32\)"):
        pretrain(
            debug_config(
                "flava_like",
                tmp_path / "c",
                *short,
                f"model.init={mine}",
                "model.hidden_size=32",
                world=worlds(8),
            )
        )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (mine / name).unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="holds no tokenizer.*set data.tokenizer"):
        pretrain(
            debug_config(
                "flava_like", tmp_path / "d", *short, f"model.init={mine}", world=worlds(8)
            )
        )


def test_patch_sampling_with_masked_image_modeling_is_refused_before_the_run(
    tmp_path: Path,
) -> None:
    from onetower.training.config import ConfigError

    cfg = debug_config("flava_like", tmp_path, "model.max_image_patches=8")
    with pytest.raises(ConfigError, match=r"max_image_patches=8 .*\['masked_pair'\]"):
        pretrain(cfg)
    assert not (tmp_path / "flava_like").exists()  # refused before the output folder
