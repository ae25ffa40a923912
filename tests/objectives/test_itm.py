"""ITM head and its negative samplers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from onetower.data import keys
from onetower.objectives import PAIR, ObjectiveComposer, StepViews, build_objective
from onetower.objectives.itm_negatives import hard_negatives, random_negatives


def test_hard_negatives_never_pick_the_positive_or_same_image():
    g = torch.Generator().manual_seed(0)
    B = 6
    image_ids = torch.tensor([0, 1, 1, 2, 3, 3])
    for _ in range(200):
        # A strongly dominant diagonal: softmax would put ~all mass on the positive.
        sim = torch.randn(B, B, generator=g) + 50 * torch.eye(B)
        for ids in (None, image_ids):
            neg = hard_negatives(sim, g, ids)
            assert len(neg) == 2 * B
            assert (neg.text_index != neg.image_index).all()
            if ids is not None:
                assert (ids[neg.text_index] != ids[neg.image_index]).all()


def test_hard_negatives_follow_the_similarity():
    g = torch.Generator().manual_seed(0)
    sim = torch.zeros(3, 3)
    sim[0, 1] = sim[1, 0] = 40.0  # image 0 <-> text 1 is by far the hardest off-diagonal pair
    neg = hard_negatives(sim, g)
    t2i = dict(zip(neg.text_index[:3].tolist(), neg.image_index[:3].tolist(), strict=True))
    assert t2i[1] == 0 and t2i[0] == 1


def test_random_negatives_ratio_and_no_positive():
    g = torch.Generator().manual_seed(0)
    for ratio, want in ((1.0, 8), (0.5, 4)):
        neg = random_negatives(8, ratio, g, torch.tensor([0, 0, 1, 2, 3, 4, 5, 6]))
        assert len(neg) == want and (neg.text_index != neg.image_index).all()
        assert not ((neg.text_index < 2) & (neg.image_index < 2)).any()
    assert len(random_negatives(1, 1.0, g)) == 0  # nothing to swap with


def test_itm_reports_the_loss_of_knowing_only_the_label_shares(model_factory, batch_factory):
    model, batch = model_factory(), batch_factory()
    for negatives, ratio, share in (
        ("random", 0.5, 4 / 6),
        ("random", 1.0, 0.5),
        ("hard", 1.0, 1 / 3),
    ):
        head = build_objective("itm", model, {"negatives": negatives, "neg_ratio": ratio}, {})
        spec = head.views[0]  # with the text / image views hard negatives are mined from
        plan = {PAIR: spec, **{v.kind: v for v in spec.requires()}}
        pair = StepViews(model, batch, plan, torch.Generator().manual_seed(0))[PAIR]
        assert pair.itm_labels.float().mean().item() == pytest.approx(share)
        entropy = -(share * math.log(share) + (1 - share) * math.log(1 - share))
        res = head({PAIR: pair}, batch)
        assert float(res.metrics["chance_loss"]) == pytest.approx(entropy, abs=1e-6)


def test_itm_loss_matches_loop(model_factory, batch_factory):
    model, batch = model_factory(), batch_factory()
    head = build_objective("itm", model, {"negatives": "random", "neg_ratio": 0.5}, {})
    views = StepViews(model, batch, {PAIR: head.views[0]}, torch.Generator().manual_seed(0))
    pair = views[PAIR]
    res = head({PAIR: pair}, batch)
    assert pair.itm_labels.tolist() == [1, 1, 1, 1, 0, 0]
    # Rebuild every pair by hand and classify it on its own.
    rows_t = [0, 1, 2, 3, *pair.negatives.text_index.tolist()]
    rows_i = [0, 1, 2, 3, *pair.negatives.image_index.tolist()]
    total = 0.0
    for t, i, y in zip(rows_t, rows_i, pair.itm_labels.tolist(), strict=True):
        out = model(
            input_ids=batch[keys.INPUT_IDS][t : t + 1],
            attention_mask=batch[keys.ATTENTION_MASK][t : t + 1],
            pixel_values=batch[keys.PIXEL_VALUES][i : i + 1],
        )
        total = total - F.log_softmax(head.classifier(out.pooler_output[0]), 0)[y]
    torch.testing.assert_close(res.loss, total / len(rows_t), atol=1e-5, rtol=1e-5)
    assert set(res.metrics) == {"acc", "pos_acc", "neg_acc", "chance_loss"}


def test_itm_hard_uses_contrastive_similarity(model_factory):
    model = model_factory()
    contrastive = build_objective("contrastive", model, {}, {})
    itm = build_objective("itm", model, {"negatives": "hard"}, {"contrastive": contrastive})
    sampler = itm.views[0].negatives
    assert sampler.similarity == contrastive.similarity
    assert [v.kind for v in sampler.views] == ["text", "image"]
    # built through the composer, ITM's declared use of the contrastive head orders the build
    comp = ObjectiveComposer.from_config(
        model, {"itm": {"weight": 1.0, "negatives": "hard"}, "contrastive": {"weight": 1.0}}
    )
    assert comp.heads["itm"].views[0].negatives.similarity == comp.heads["contrastive"].similarity


def test_itm_swap_replaces_positives_in_place_like_vilt(model_factory, batch_factory):
    model, batch = model_factory(), batch_factory()
    head = build_objective(
        "itm", model, {"negatives": "random", "neg_ratio": 0.5, "swap": True}, {}
    )
    assert head.views[0].layout == "swap"
    views = StepViews(model, batch, {PAIR: head.views[0]}, torch.Generator().manual_seed(0))
    pair = views[PAIR]
    neg = pair.negatives
    B = batch[keys.INPUT_IDS].shape[0]
    assert pair.encoder.last_hidden_state.shape[0] == B  # B sequences, not B + K
    assert sorted(torch.nonzero(pair.itm_labels == 0).flatten().tolist()) == sorted(
        neg.text_index.tolist()
    )
    res = head({PAIR: pair}, batch)
    total = 0.0
    for t in range(B):  # every row by hand: its own text, its own or the swapped-in image
        swapped = (neg.text_index == t).nonzero().flatten()
        i = int(neg.image_index[swapped[0]]) if len(swapped) else t
        out = model(
            input_ids=batch[keys.INPUT_IDS][t : t + 1],
            attention_mask=batch[keys.ATTENTION_MASK][t : t + 1],
            pixel_values=batch[keys.PIXEL_VALUES][i : i + 1],
        )
        total = total - F.log_softmax(head.classifier(out.pooler_output[0]), 0)[int(i == t)]
    torch.testing.assert_close(res.loss, total / B, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="swap=true needs negatives=random"):
        build_objective("itm", model, {"negatives": "hard", "swap": True}, {})
