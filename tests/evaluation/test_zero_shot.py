"""Zero-shot evaluation of a pretraining run: R@K, ITM re-ranking, zero-shot classification."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from onetower.data import PairCollator, build_dataset, build_image_transform, load_pairs
from onetower.evaluation.schema import EvaluateConfig
from onetower.evaluation.zero_shot import (
    HEADS_FILE,
    embed_pairs,
    evaluate_run,
    itm_rerank,
    load_pretrained_run,
    recall_at_k,
    warn_if_rerank_lowers,
)
from onetower.pretraining import pretrain
from onetower.training import load_config
from onetower.training.config import ConfigError

from ..conftest import debug_config


def reference_recall(scores: torch.Tensor, captions: list[str], k: int) -> float:
    """Loop reference: query i hits if a caption equal to captions[i] is in its top k."""
    hits = 0
    for i in range(scores.shape[0]):
        top = scores[i].argsort(descending=True)[:k].tolist()
        hits += any(captions[j] == captions[i] for j in top)
    return 100.0 * hits / scores.shape[0]


def test_recall_at_k_matches_a_loop_reference() -> None:
    g = torch.Generator().manual_seed(0)
    captions = [f"c{i % 13}" for i in range(40)]  # duplicates: identical captions are hits
    sim = torch.randn(40, 40, generator=g)
    got = recall_at_k(sim, sim.t(), captions, ks=(1, 3, 10))
    for k in (1, 3, 10):
        assert got[f"i2t_r{k}"] == pytest.approx(reference_recall(sim, captions, k))
        assert got[f"t2i_r{k}"] == pytest.approx(reference_recall(sim.t(), captions, k))
    perfect = recall_at_k(torch.eye(5), torch.eye(5), list("abcde"))
    assert all(v == 100.0 for v in perfect.values())


@pytest.fixture(scope="module")
def flava_run(tmp_path_factory):
    from accelerate.state import AcceleratorState, GradientState, PartialState

    tmp = tmp_path_factory.mktemp("flava")
    result = pretrain(
        debug_config(
            "flava_like",
            tmp,
            "train.max_steps=6",
            "train.eval_every=3",
            "data.synthetic.n_val=24",
            "run.tracker=tensorboard",
        )
    )
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    return result


def test_run_saves_heads_and_processor_and_rebuilds(flava_run) -> None:
    final = flava_run.final_model
    assert (final / HEADS_FILE).is_file() and (final / "processor_config.json").is_file()
    cfg, composer, tokenizer = load_pretrained_run(flava_run.output_dir)
    assert {"contrastive", "itm", "mlm"} <= set(composer.heads) and not composer.training
    # the MLM decoder is still tied to the (loaded) token embedding
    assert composer.heads["mlm"].embedding.weight is composer.model.text.word_embeddings.weight
    assert len(tokenizer) <= composer.model.config.vocab_size


def test_itm_rerank_reorders_only_the_top_k(flava_run) -> None:
    cfg, composer, tokenizer = load_pretrained_run(flava_run.output_dir)
    d = cfg.data
    pairs = load_pairs(
        str(next(flava_run.output_dir.parent.glob("world/*/pairs/validation"))), split="validation"
    )
    ds = build_dataset(pairs, build_image_transform(d.image_size, False))
    collate = PairCollator(tokenizer, d.max_text_len, pad_to_max_length=True)
    batches = [collate([ds[i] for i in range(j, j + 8)]) for j in (0, 8)]
    image, text = embed_pairs(composer, batches)
    sim = image @ text.t()  # (16, 16)
    i2t, t2i = itm_rerank(composer, sim, batches, k=16)
    # k = N: every candidate is scored by ITM; check a row against a direct ITM call
    b = batches[0]
    with torch.no_grad():
        out = composer.model(
            input_ids=torch.cat([x["input_ids"] for x in batches]),
            attention_mask=torch.cat([x["attention_mask"] for x in batches]),
            pixel_values=b["pixel_values"][:1].expand(16, -1, -1, -1),
        )
        logits = composer.heads["itm"].classifier(out.pooler_output)
    # default: ITM log P(match) + the contrastive logit; "itm": ITM alone (ALBEF)
    log_match = logits.float().log_softmax(-1)[:, 1]
    scale = composer.heads["contrastive"].scale().exp()
    torch.testing.assert_close(i2t[0], log_match + scale * sim[0], atol=1e-4, rtol=0)
    itm_only, _ = itm_rerank(composer, sim, batches, k=16, score="itm")
    torch.testing.assert_close(itm_only[0], log_match, atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="itm_rerank_score"):
        itm_rerank(composer, sim, batches, k=16, score="logits")
    # k = 1: the top-1 is unchanged, so R@1 equals the contrastive R@1
    captions = [f"{i}" for i in range(16)]
    one = recall_at_k(*itm_rerank(composer, sim, batches, k=1), captions)
    base = recall_at_k(sim, sim.t(), captions)
    assert one["i2t_r1"] == base["i2t_r1"] and one["t2i_r1"] == base["t2i_r1"]
    # k = 3: rows keep their contrastive top-3 as their top-3
    i2t3, _ = itm_rerank(composer, sim, batches, k=3)
    assert torch.equal(i2t3.topk(3).indices.sort(1).values, sim.topk(3).indices.sort(1).values)
    assert t2i.shape == (16, 16)


def test_evaluate_recipe(flava_run, tmp_path) -> None:
    out = tmp_path / "eval.json"
    cfg = load_config(
        EvaluateConfig,
        [
            f"run_dir={flava_run.output_dir}",
            "itm_rerank_k=5",
            "max_samples=24",
            "batch_size=10",
            "retrieval.max_images=12",
            f"output={out}",
        ],
    )
    metrics = evaluate_run(cfg)
    assert json.loads(out.read_text()) == metrics
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r10", "itm_rerank/i2t_r1", "zero_shot_acc"):
        assert 0 <= metrics[key] <= 100, key
    assert metrics["i2t_r1"] <= metrics["i2t_r5"] <= metrics["i2t_r10"]
    assert metrics["zero_shot_chance"] >= 25  # at most the 4 shapes
    # the synthetic world's grouped-caption split, by the Karpathy protocol
    assert metrics["karpathy/n_images"] == 12 and metrics["karpathy/n_captions"] > 12
    assert metrics["karpathy/chance/t2i_r1"] == pytest.approx(100 / 12)
    for key in ("karpathy/i2t_r1", "karpathy/t2i_r10", "karpathy/itm_rerank/t2i_r1"):
        assert 0 <= metrics[key] <= 100, key
    broken = tmp_path / "broken"
    shutil.copytree(flava_run.output_dir, broken)
    (broken / "final" / HEADS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="not a finished pretraining run"):
        load_pretrained_run(broken)


def test_zero_shot_during_training_every_eval(flava_run) -> None:
    """Retrieval R@1/5/10 and zero-shot classification per probe-word group at every
    ``train.eval_every`` step and at the end, in the history and the tracker's event file."""
    for key in ("eval/i2t_r5", "eval/t2i_r10", "eval/zero_shot_shape_acc"):
        assert [s for s, _ in flava_run.history[key]] == [3, 6], key
    m = flava_run.metrics
    assert m["eval/zero_shot_shape_chance"] == 25.0 and m["eval/zero_shot_colour_chance"] == 100 / 6
    assert 0 < m["eval/zero_shot_shape_n"] <= 24
    assert "zero-shot shape classification" in flava_run.summary
    events = list(flava_run.output_dir.rglob("events.out.tfevents.*"))
    assert events and any(b"zero_shot_shape_acc" in e.read_bytes() for e in events)


def test_caption_label_names_one_word_or_none() -> None:
    from onetower.pretraining.evaluate import caption_label

    words = ["circle", "square"]
    assert caption_label("a red circle left of a blue circle", words) == "circle"
    assert caption_label("two squares", words) == "square"
    assert caption_label("a circle above a square", words) is None
    assert caption_label("a triangle", words) is None


def test_summary_says_when_zero_shot_is_not_above_chance() -> None:
    from onetower.pretraining.report import versus_chance

    # 62 images, 4 classes: 2 binomial standard errors are 11.0 points
    assert "not above chance: 2 standard errors are 11.0 points" in versus_chance(29.0, 25.0, 62)
    assert "not above chance" in versus_chance(17.7, 25.0, 62)
    assert versus_chance(40.0, 25.0, 62) == ""  # above 25 + 11
    assert versus_chance(29.0, 25.0, 2000) == ""  # the same figure on 2000 images is above
    assert versus_chance(50.0, float("nan"), 62) == "" and versus_chance(50.0, 25.0, 0) == ""


def test_a_rerank_that_lowers_r1_is_warned_per_direction_and_set(capsys) -> None:
    metrics = {"i2t_r1": 82.0, "t2i_r1": 78.5, "itm_rerank/i2t_r1": 82.5, "itm_rerank/t2i_r1": 77.5}
    warn_if_rerank_lowers(metrics, "the held-out pairs")
    out = capsys.readouterr().out
    assert "lowered t2i R@1 on the held-out pairs (78.5 -> 77.5)" in out
    assert "i2t" not in out  # raised: no warning
    warn_if_rerank_lowers({"i2t_r1": 50.0, "t2i_r1": 50.0}, "x")  # no re-ranking run
    warn_if_rerank_lowers(metrics | {"itm_rerank/t2i_r1": 78.5}, "x")  # equal is not lower
    assert capsys.readouterr().out == ""


def test_summary_says_when_itm_is_still_at_chance() -> None:
    from onetower.pretraining.report import heads_at_chance

    # ALBEF's hard negatives from step 0 (1 positive in 3): the loss never left the entropy
    (clause,) = heads_at_chance({"itm_loss": 0.636, "itm_chance_loss": 0.6365, "mlm_loss": 1.0})
    assert clause.startswith("itm is still at chance (held-out loss 0.636")
    assert heads_at_chance({"itm_loss": 0.580, "itm_chance_loss": 0.693}) == []  # learning
    assert heads_at_chance({"mlm_loss": 9.0}) == []  # heads without a chance figure
