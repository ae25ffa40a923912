"""The retrieval fine-tuning recipe on files the test writes in the Karpathy layout."""

from __future__ import annotations

import json
import random

import pytest

from onetower.data import train_wordpiece_tokenizer
from onetower.data.karpathy import write_karpathy
from onetower.data.world import render, sample_scene
from onetower.data.world_tasks import scene_captions
from onetower.finetuning.retrieval import FinetuneRetrievalConfig, finetune_retrieval
from onetower.training import load_config
from onetower.training.config import ConfigError

from ..conftest import CONFIGS


@pytest.fixture(scope="module")
def flickr_layout(tmp_path_factory):
    """A Flickr30K-layout split file (no filepath) with grouped captions and its images."""
    root = tmp_path_factory.mktemp("flickr")
    rng, images, texts = random.Random(0), [], []
    (root / "flickr30k-images").mkdir()
    for i in range(36):
        scene = sample_scene(rng)
        name = f"{1000 + i}.jpg"
        render(scene, 32).save(root / "flickr30k-images" / name, quality=95)
        caps = scene_captions(scene)
        images.append({"filename": name, "split": "train" if i < 24 else "test", "sentences": caps})
        texts += caps
    write_karpathy(root / "dataset_flickr30k.json", "flickr30k", images)
    train_wordpiece_tokenizer(texts, 256, 24).save_pretrained(str(root / "tokenizer"))
    return root


def _cfg(root, out, *extra):
    return load_config(
        FinetuneRetrievalConfig,
        [
            "--config",
            str(CONFIGS / "debug" / "finetune_retrieval.yaml"),
            f"run.output_dir={out}",
            f"data.file={root / 'dataset_flickr30k.json'}",
            f"data.image_root={root / 'flickr30k-images'}",
            f"data.tokenizer={root / 'tokenizer'}",
            *extra,
        ],
    )


def test_finetune_retrieval_on_karpathy_files(flickr_layout, tmp_path) -> None:
    out = tmp_path / "run"
    result = finetune_retrieval(_cfg(flickr_layout, out))
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    for key in ("test/i2t_r1", "test/t2i_r10", "test/itm_rerank/i2t_r1", "test/chance/t2i_r1"):
        assert 0 <= m[key] <= 100, key
    assert m["test/n_images"] == 8.0  # eval.max_images
    assert m["test/chance/t2i_r1"] == pytest.approx(100 / 8)
    assert m["test/i2t_r1"] <= m["test/i2t_r5"] <= m["test/i2t_r10"]
    preds = json.loads((out / "predictions_test.json").read_text())
    assert set(preds["i2t"]) == {str(1024 + i) for i in range(8)}  # image ids = file stems
    assert all(len(v) == min(10, len(preds["captions"])) for v in preds["i2t"].values())
    final = result.final_model
    assert (final / "objectives.safetensors").is_file() and (final / "tokenizer.json").is_file()
    # from that folder: its heads are loaded and the summary says so
    again = finetune_retrieval(
        _cfg(flickr_layout, tmp_path / "again", f"init={final}", "train.max_steps=2")
    )
    assert "heads ['contrastive', 'itm'] loaded" in again.record["summary"]


def test_bad_retrieval_config(flickr_layout, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="data.file"):
        finetune_retrieval(_cfg(flickr_layout, tmp_path / "a", "data.file=/no/file.json"))
    with pytest.raises(ValueError, match="Karpathy splits"):
        finetune_retrieval(_cfg(flickr_layout, tmp_path / "b", "data.eval_split=testing"))
    with pytest.raises(ConfigError, match="rerank_score"):
        finetune_retrieval(_cfg(flickr_layout, tmp_path / "c", "eval.rerank_score=sum"))
