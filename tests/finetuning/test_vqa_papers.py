"""VQA as the papers run it: train + val for a test-dev submission, the vocabulary over
train + val, per answer type figures, fine-tuning at a higher resolution."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from onetower import OneTowerForQuestionAnswering
from onetower.data import answer_vocab, read_vqa
from onetower.finetuning import FinetuneConfig, finetune
from onetower.finetuning.vqa_metric import normalize_answer
from onetower.training import ConfigError, load_config

from ..conftest import CONFIGS


def _config(tmp_path: Path, world: Path, *overrides: str):
    argv = [
        "--config",
        str(CONFIGS / "debug" / "finetune_vqa.yaml"),
        f"run.output_dir={tmp_path / 'vqa'}",
        f"data.synthetic.root={world}",
        *overrides,
    ]
    return load_config(FinetuneConfig, argv)


def _test_dev(vqa_dir: Path) -> None:
    """A test-dev2015 split in the official layout: questions only, no annotations, images in
    test2015/ named COCO_test2015_* (test-dev is a subset of test2015 and has no folder)."""
    q = json.loads((vqa_dir / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    q["data_subtype"] = "test-dev2015"
    (vqa_dir / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(json.dumps(q))
    (vqa_dir / "test2015").mkdir(exist_ok=True)
    for f in (vqa_dir / "val2014").iterdir():
        name = f.name.replace("val2014", "test2015")
        shutil.copy(f, vqa_dir / "test2015" / name)


def test_train_plus_val_submission_at_a_higher_resolution(tmp_path) -> None:
    world = tmp_path / "world"
    # a first run writes the world (its VQA files are then extended with test-dev)
    base = finetune(_config(tmp_path / "base", world, "train.max_steps=2"))
    assert {"val2014/vqa_acc_yes_no", "val2014/vqa_acc_number"} <= set(
        base.metrics
    )  # per answer type figures
    assert base.metrics["val2014/vqa_metric_master"] == 1.0  # scored by the current official code
    (vqa_dir,) = world.glob("v*/vqa")
    _test_dev(vqa_dir)
    run = finetune(
        _config(
            tmp_path / "sub",
            world,
            "task.train_split=train2014+val2014",
            "task.vocab_splits=train2014+val2014",
            "task.eval_splits=[test-dev2015]",
            "data.image_size=48",
        )
    )
    # the results file the evaluation server takes: every test-dev question, one answer each
    rows = json.loads((run.output_dir / "predictions_test-dev2015.json").read_text())
    questions = json.loads(
        (vqa_dir / "v2_OpenEnded_mscoco_test-dev2015_questions.json").read_text()
    )
    assert sorted(r["question_id"] for r in rows) == sorted(
        q["question_id"] for q in questions["questions"]
    )
    assert all(set(r) == {"question_id", "answer"} and isinstance(r["answer"], str) for r in rows)
    model = OneTowerForQuestionAnswering.from_pretrained(run.final_model)
    # vocabulary over train + val (ViLT), at the config's threshold
    both = [
        read_vqa(vqa_dir, s).dataset["multiple_choice_answer"] for s in ("train2014", "val2014")
    ]
    vocab = answer_vocab(([normalize_answer(a)] for ans in both for a in ans if a), 2)
    assert [model.config.id2label[i] for i in range(len(vocab))] == vocab
    # trained at 48 px with the 32-px position table resampled to the 6x6 grid
    assert model.config.image_size == 48
    assert model.onetower.image.pos_embed.shape[1] == model.onetower.image.num_prefix_tokens + 36
    out = model(
        input_ids=torch.ones(1, 4, dtype=torch.long), pixel_values=torch.zeros(1, 3, 48, 48)
    )
    assert out.logits.shape == (1, len(vocab))
    with pytest.raises(ConfigError, match="data.image_size 50 is not a multiple"):
        finetune(_config(tmp_path / "bad", world, "data.image_size=50"))
    with pytest.raises(ConfigError, match="task.vqa_metric"):
        finetune(_config(tmp_path / "bad2", world, "task.vqa_metric=2017"))
