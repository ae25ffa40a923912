"""Fine-tuning recipes (VQA v2, NLVR2) run end to end at toy scale; their outputs load back;
bad task data and mismatched checkpoints are clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForVisualQuestionAnswering

from onetower import (
    OneTowerForImagesAndTextClassification,
    OneTowerForQuestionAnswering,
    OneTowerModel,
)
from onetower.finetuning import FinetuneConfig, finetune
from onetower.finetuning.vqa_metric import read_results
from onetower.hub import ModelFolderError
from onetower.inference import answer_question, classify_statement, load_task_model
from onetower.inference import main as inference_main
from onetower.training import ConfigError, load_config, param_groups

from ..conftest import CONFIGS


def task_config(task: str, tmp_path: Path, world: Path, *overrides: str):
    argv = [
        "--config",
        str(CONFIGS / "debug" / f"finetune_{task}.yaml"),
        f"run.output_dir={tmp_path / task}",
        f"data.synthetic.root={world}",
        *overrides,
    ]
    return load_config(FinetuneConfig, argv)


@pytest.fixture(scope="module")
def task_world(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("task_world")


def world_dir(root: Path, kind: str) -> Path:
    (folder,) = root.glob("v*_*px_*")
    return folder / kind


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory, task_world):
    return finetune(task_config("vqa", tmp_path_factory.mktemp("vqa"), task_world))


def test_vqa_recipe_learns_and_writes_official_results(vqa_run, task_world) -> None:
    losses = [v for _, v in vqa_run.history["loss"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    out = vqa_run.output_dir
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert 0 <= metrics["val2014/vqa_acc"] <= 100
    assert {"val2014/vqa_acc_yes_no", "val2014/vqa_acc_number"} <= set(metrics)
    # official results format: one answer per val question, from the model's vocabulary
    questions = json.loads(
        (world_dir(task_world, "vqa") / "v2_OpenEnded_mscoco_val2014_questions.json").read_text()
    )["questions"]
    results = read_results(out / "predictions_val2014.json")
    assert sorted(results) == sorted(q["question_id"] for q in questions)
    model = AutoModelForVisualQuestionAnswering.from_pretrained(vqa_run.final_model)
    assert isinstance(model, OneTowerForQuestionAnswering)
    assert set(results.values()) <= set(model.config.id2label.values())
    assert f"val2014/vqa_acc {metrics['val2014/vqa_acc']:.1f}" in vqa_run.summary
    # the run writes the model card into final/ at save time, with the metrics in it
    card = (vqa_run.final_model / "README.md").read_text()
    assert f"| val2014/vqa_acc | {metrics['val2014/vqa_acc']:.4f} |" in card
    assert "No metrics were recorded" not in card and "trust_remote_code=True" in card
    record = json.loads((out / "metrics.json").read_text())
    assert record["task"] == "vqa" and record["model_class"] == "OneTowerForQuestionAnswering"


def test_saved_vqa_model_answers_an_image_file(vqa_run, task_world, capsys) -> None:
    model, processor = load_task_model(vqa_run.final_model)
    image = next((world_dir(task_world, "vqa") / "val2014").glob("*.jpg"))
    answers = answer_question(model, processor, image, "what colour is the circle?", top_k=3)
    assert len(answers) == 3 and all(0 <= s <= 1 for _, s in answers)
    assert [s for _, s in answers] == sorted((s for _, s in answers), reverse=True)
    inference_main([str(vqa_run.final_model), str(image), "how many circles are there?"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[0].split()[1] in model.config.id2label.values()
    with pytest.raises(FileNotFoundError, match="nope.jpg does not exist"):
        answer_question(model, processor, image.parent / "nope.jpg", "what?")
    with pytest.raises(ValueError, match="not a fine-tuned task model"):
        load_task_model(_encoder_dir(vqa_run))


def _encoder_dir(run) -> Path:
    """A plain encoder saved from the run's task model (as a pretraining run would)."""
    folder = run.output_dir / "encoder"
    if not folder.exists():
        model = OneTowerForQuestionAnswering.from_pretrained(run.final_model)
        model.onetower.save_pretrained(folder)
        shutil.copy(run.final_model / "tokenizer.json", folder)
        shutil.copy(run.final_model / "tokenizer_config.json", folder)
    return folder


def test_vqa_from_a_pretrained_encoder_and_vocabulary_checks(vqa_run, task_world, tmp_path) -> None:
    encoder = _encoder_dir(vqa_run)
    cfg = task_config("vqa", tmp_path, task_world, f"init={encoder}", "train.max_steps=2")
    result = finetune(cfg)
    model = OneTowerForQuestionAnswering.from_pretrained(result.final_model)
    # the encoder came from init, the head is new
    enc = OneTowerForQuestionAnswering.from_pretrained(vqa_run.final_model).onetower
    w = "text.word_embeddings.weight"
    assert not torch.equal(model.onetower.state_dict()[w], enc.state_dict()[w])  # trained 2 steps
    assert torch.allclose(model.onetower.state_dict()[w], enc.state_dict()[w], atol=0.05)
    # a VQA checkpoint whose answers differ from the data's vocabulary cannot train further
    bad = tmp_path / "bad_vocab"
    shutil.copytree(vqa_run.final_model, bad)
    config = json.loads((bad / "config.json").read_text())
    config["id2label"] = {str(i): a for i, a in enumerate(reversed(config["id2label"].values()))}
    config["label2id"] = {a: int(i) for i, a in config["id2label"].items()}
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="answer vocabulary of .* does not match"):
        finetune(task_config("vqa", tmp_path / "x", task_world, f"init={bad}"))
    with pytest.raises(ConfigError, match="answer vocabulary of .* does not match"):
        finetune(
            task_config("vqa", tmp_path / "y", task_world, f"init={bad}", "task.min_answer_count=1")
        )


def test_random_init_baseline_takes_only_the_architecture(vqa_run, task_world, tmp_path) -> None:
    """init_weights=random: the saved encoder's architecture and tokenizer, fresh weights."""
    encoder = _encoder_dir(vqa_run)
    run = finetune(
        task_config(
            "vqa", tmp_path, task_world, f"init={encoder}", "init_weights=random", "run.seed=1"
        )
    )
    assert "from random init (the architecture of" in run.summary
    model = OneTowerForQuestionAnswering.from_pretrained(run.final_model)
    saved = OneTowerModel.from_pretrained(encoder)
    for k in ("hidden_size", "num_hidden_layers", "vocab_size", "image_size"):
        assert getattr(model.config, k) == getattr(saved.config, k)
    a, b = model.onetower.state_dict(), saved.state_dict()
    qkv = [k for k in a if k.endswith("qkv.weight")]
    # the encoder was itself trained briefly from a seed-0 init: another seed starts elsewhere
    assert qkv and not any(torch.allclose(a[k], b[k], atol=0.05) for k in qkv)
    with pytest.raises(ConfigError, match="init_weights must be 'pretrained' or 'random'"):
        finetune(
            task_config(
                "vqa", tmp_path / "bad", task_world, f"init={encoder}", "init_weights=zeros"
            )
        )


def test_nlvr2_recipe_pair_method(tmp_path, task_world) -> None:
    result = finetune(task_config("nlvr2", tmp_path, task_world))
    losses = [v for _, v in result.history["loss"]]
    assert len(losses) == 3 and all(v == v for v in losses)
    out = result.output_dir
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert 0 <= metrics["dev/nlvr2_acc"] <= 100
    lines = (out / "predictions_dev.csv").read_text().splitlines()
    dev = (world_dir(task_world, "nlvr2") / "dev.json").read_text().splitlines()
    assert [ln.split(",")[0] for ln in lines] == [json.loads(d)["identifier"] for d in dev]
    assert {ln.split(",")[1] for ln in lines} <= {"True", "False"}
    model = AutoModelForSequenceClassification.from_pretrained(result.final_model)
    assert isinstance(model, OneTowerForImagesAndTextClassification)
    assert model.config.num_segments == 3
    model, processor = load_task_model(result.final_model)
    pair = sorted((world_dir(task_world, "nlvr2") / "images" / "dev").glob("dev-0-0-img*.png"))
    label, prob = classify_statement(model, processor, pair, "both images contain a circle")
    assert label in ("True", "False") and 0.5 <= prob <= 1


def test_from_encoder_copies_the_image_segment_into_the_new_row() -> None:
    from onetower import OneTowerConfig, OneTowerModel

    enc = OneTowerModel(OneTowerConfig.from_size("tiny"))
    model = OneTowerForImagesAndTextClassification.from_encoder(enc, {0: "False", 1: "True"})
    seg = model.onetower.segment_embeddings.weight
    assert (
        seg.shape[0] == 3
        and torch.equal(seg[2], seg[1])
        and torch.equal(seg[:2], enc.segment_embeddings.weight)
    )
    assert (
        model.classifier[0].in_features
        == model.classifier[0].out_features
        == 2 * enc.config.hidden_size
    )
    # the new head is what task.head_lr_mult speeds up (ViLT: 10x), and nothing else
    groups = param_groups(model, 0.01, lr=1e-4, head_prefixes=model.head_prefixes, head_lr_mult=10)
    fast = {id(p) for g in groups if g.get("lr") == 1e-3 for p in g["params"]}
    named = dict(model.named_parameters())
    assert fast and fast == {id(p) for n, p in named.items() if n.startswith("classifier.")}


def test_bad_task_data_is_named(tmp_path, task_world, vqa_run) -> None:  # vqa_run writes the world
    vqa = tmp_path / "vqa"
    shutil.copytree(world_dir(task_world, "vqa"), vqa)
    missing = next((vqa / "train2014").glob("*.jpg"))
    missing.unlink()
    with pytest.raises(
        FileNotFoundError, match=r"image file\(s\) referenced .* question_id \d+: .*" + missing.name
    ):
        finetune(
            task_config(
                "vqa",
                tmp_path / "a",
                task_world,
                f"data.root={vqa}",
                f"data.tokenizer={world_dir(task_world, 'tokenizer')}",
            )
        )
    nlvr2 = tmp_path / "nlvr2"
    shutil.copytree(world_dir(task_world, "nlvr2"), nlvr2)
    lines = (nlvr2 / "train.json").read_text().splitlines()
    row = json.loads(lines[3]) | {"label": "maybe"}
    lines[3] = json.dumps(row)
    (nlvr2 / "train.json").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"train.json:4: label 'maybe' is not True/False"):
        finetune(
            task_config(
                "nlvr2",
                tmp_path / "b",
                task_world,
                f"data.root={nlvr2}",
                f"data.tokenizer={world_dir(task_world, 'tokenizer')}",
            )
        )
    with pytest.raises(ConfigError, match="task.name must be one of"):
        finetune(task_config("nlvr2", tmp_path / "c", task_world, "task.name=gqa"))
    with pytest.raises(ModelFolderError, match="has no config.json: expected a folder saved by"):
        finetune(task_config("vqa", tmp_path / "d", task_world, f"init={tmp_path}"))
    with pytest.raises(
        ConfigError, match=r"whose hidden_size=64 differ from model.\['hidden_size'\]"
    ):
        finetune(
            task_config(
                "vqa",
                tmp_path / "f",
                task_world,
                f"init={_encoder_dir(vqa_run)}",
                "model.hidden_size=32",
            )
        )
    with pytest.raises(ConfigError, match="no tokenizer was found: set data.tokenizer"):
        finetune(task_config("vqa", tmp_path / "e", task_world, f"data.root={vqa}"))


def test_stopped_and_resumed_fine_tuning_equals_uninterrupted(tmp_path, task_world) -> None:
    full = finetune(task_config("nlvr2", tmp_path / "full", task_world))
    stopped = finetune(task_config("nlvr2", tmp_path / "part", task_world, "train.stop_at=4"))
    assert stopped.steps == 4 and stopped.summary == "stopped early"  # at a log step
    resumed = finetune(task_config("nlvr2", tmp_path / "part", task_world, "run.resume=latest"))
    assert resumed.history["loss"] == full.history["loss"]
    a = OneTowerForImagesAndTextClassification.from_pretrained(full.final_model).state_dict()
    b = OneTowerForImagesAndTextClassification.from_pretrained(resumed.final_model).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_classifier_pooling_reads_the_fused_patches() -> None:
    from onetower import OneTowerConfig, OneTowerModel

    enc = OneTowerModel(OneTowerConfig.from_size("tiny")).eval()
    qa = OneTowerForQuestionAnswering.from_encoder(enc, {0: "a", 1: "b"}, "cls+patches").eval()
    D = enc.config.hidden_size
    assert qa.classifier[0].in_features == 3 * D
    ids, px = torch.randint(5, 100, (2, 6)), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = qa(input_ids=ids, pixel_values=px)
        ref = qa.onetower(input_ids=ids, pixel_values=px)
    patches = ref.tokens("image_patches")
    torch.testing.assert_close(out.pooled[:, :D], ref.pooler_output)
    torch.testing.assert_close(out.pooled[:, D : 2 * D], patches.amax(1))
    torch.testing.assert_close(out.pooled[:, 2 * D :], patches.mean(1))
    pair = OneTowerForImagesAndTextClassification.from_encoder(enc, {0: "F", 1: "T"}, "cls+patches")
    assert pair.classifier[0].in_features == 6 * D
    assert pair(input_ids=ids, pixel_values=torch.randn(2, 2, 3, 32, 32)).logits.shape == (2, 2)
    with pytest.raises(ValueError, match="classifier_pooling must be one of"):
        OneTowerForQuestionAnswering.from_encoder(enc, {0: "a"}, "mean")


@pytest.mark.parametrize("pooling", ["cls", "cls+patches"])
def test_pair_method_in_one_call_equals_one_pass_per_image(pooling: str) -> None:
    """ViLT's pair method, encoded in one call: each image's rows equal (text, image i) encoded
    on their own with segment id 1 + i, concatenated in image order."""
    from onetower import OneTowerConfig, OneTowerModel
    from onetower.task_models import pooled_features

    torch.manual_seed(0)
    enc = OneTowerModel(OneTowerConfig.from_size("tiny", text_tower_layers=1)).eval()
    model = OneTowerForImagesAndTextClassification.from_encoder(enc, {0: "F", 1: "T"}, pooling)
    model.eval()
    with torch.no_grad():  # distinct segment rows, so a swapped image order would show
        model.onetower.segment_embeddings.weight[2].normal_()
    ids, px = torch.randint(5, 100, (3, 7)), torch.randn(3, 2, 3, 32, 32)
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=px)
        ref = torch.cat(
            [
                pooled_features(
                    model.onetower(
                        input_ids=ids,
                        attention_mask=mask,
                        pixel_values=px[:, i],
                        image_segment=1 + i,
                    ),
                    pooling,
                )
                for i in range(2)
            ],
            dim=-1,
        )
    torch.testing.assert_close(out.pooled, ref)
    torch.testing.assert_close(out.logits, model.classifier(ref))


@pytest.mark.parametrize("pooling", ["cls", "cls+patches"])
def test_triplet_method_reads_one_joint_pass(pooling: str) -> None:
    """UNITER's triplet: the statement and both images in one sequence; the head reads that
    pass's pooled output (and each image's patch max and mean, in image order)."""
    from onetower import OneTowerConfig, OneTowerModel

    torch.manual_seed(0)
    enc = OneTowerModel(OneTowerConfig.from_size("tiny")).eval()
    model = OneTowerForImagesAndTextClassification.from_encoder(
        enc, {0: "F", 1: "T"}, pooling, multi_image_method="triplet"
    ).eval()
    D = enc.config.hidden_size
    width = D if pooling == "cls" else 5 * D
    assert model.config.multi_image_method == "triplet"
    assert model.classifier[0].in_features == model.classifier[0].out_features == width
    ids, px = torch.randint(5, 100, (3, 7)), torch.randn(3, 2, 3, 32, 32)
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=px, labels=labels)
        ref = model.onetower(input_ids=ids, pixel_values=px)
    expect = [ref.pooler_output]
    if pooling == "cls+patches":
        for name in ("image_patches", "image2_patches"):
            expect += [ref.tokens(name).amax(1), ref.tokens(name).mean(1)]
    torch.testing.assert_close(out.pooled, torch.cat(expect, dim=-1))
    torch.testing.assert_close(out.logits, model.classifier(out.pooled))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    with pytest.raises(ValueError, match="multi_image_method must be one of"):
        OneTowerForImagesAndTextClassification.from_encoder(
            enc, {0: "F", 1: "T"}, multi_image_method="quad"
        )


def test_nlvr2_recipe_triplet_method(tmp_path, task_world) -> None:
    result = finetune(task_config("nlvr2", tmp_path, task_world, "task.multi_image_method=triplet"))
    assert all(v == v for _, v in result.history["loss"])
    model = AutoModelForSequenceClassification.from_pretrained(result.final_model)
    assert model.config.multi_image_method == "triplet"
    with pytest.raises(ConfigError, match="task.multi_image_method: multi_image_method must be"):
        finetune(task_config("nlvr2", tmp_path / "bad", task_world, "task.multi_image_method=x"))
