"""Composer: config-driven heads, weights, views computed once, unpaired batches."""

from __future__ import annotations

import pytest
import torch

from onetower.data import keys
from onetower.objectives import OBJECTIVES, ObjectiveComposer, StepViews, ViewConflict

FULL = {
    "mlm": {"weight": 1.0},
    "mim": {"weight": 0.5, "target": "pixel", "norm_pix_loss": True, "decoder_depth": 1},
    "itm": {"weight": 2.0, "negatives": "hard"},
    "contrastive": {"weight": 1.0},
}


def _count_calls(model) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_full_recipe_weights_and_views_once(model_factory, batch_factory):
    model = model_factory()
    comp = ObjectiveComposer.from_config(model, FULL, seed=0)
    calls = _count_calls(model)
    out = comp(batch_factory())
    assert sorted(out.views) == ["image", "masked_pair", "pair", "text"] and calls[0] == 4
    assert set(out.losses) == {f"{n}_loss" for n in FULL}
    want = sum(FULL[n]["weight"] * out.losses[f"{n}_loss"] for n in FULL)
    torch.testing.assert_close(out.loss.detach(), want)
    assert {"mlm_acc", "itm_acc", "contrastive_i2t_acc", "contrastive_t2i_acc"} <= set(out.metrics)
    assert all(not v.requires_grad for v in out.logs().values())
    out.loss.backward()
    assert all(p.grad is not None for p in comp.heads.parameters() if p.requires_grad)


def test_views_only_when_asked(model_factory, batch_factory):
    model = model_factory()
    comp = ObjectiveComposer.from_config(model, {"mlm": {"weight": 1.0}})
    calls = _count_calls(model)
    assert comp(batch_factory()).views == ("masked_pair",) and calls[0] == 1
    comp = ObjectiveComposer.from_config(model, {"itm": {"weight": 1.0}})
    assert comp(batch_factory()).views == ("pair",)  # random negatives need no text/image view


def test_weight_zero_is_not_built(model_factory):
    comp = ObjectiveComposer.from_config(
        model_factory(), {"mlm": {"weight": 1.0}, "itm": {"weight": 0.0, "negatives": "hard"}}
    )
    assert list(comp.heads) == ["mlm"]


def test_unpaired_batches_run_only_unimodal_heads(model_factory, batch_factory):
    comp = ObjectiveComposer.from_config(model_factory(), FULL)
    text = comp(batch_factory(image=False))
    assert set(text.losses) == {"mlm_loss"} and text.views == ("masked_pair",)
    image = comp(batch_factory(text=False))
    assert set(image.losses) == {"mim_loss"}
    image.loss.backward()


def test_mask_token_masking_reaches_the_encoder(model_factory, batch_factory):
    model = model_factory(use_mask_token=True)
    comp = ObjectiveComposer.from_config(model, {"mim": {"weight": 1.0, "decoder_depth": 0}})
    assert comp.plan["masked_pair"].image_mode == "mask_token"
    comp(batch_factory()).loss.backward()
    assert model.image.mask_token.grad is not None and model.image.mask_token.grad.abs().sum() > 0


def test_config_errors_name_the_culprit(model_factory):
    model = model_factory()
    with pytest.raises(ValueError, match="'mlmm'"):
        ObjectiveComposer.from_config(model, {"mlmm": {"weight": 1.0}})
    with pytest.raises(ValueError, match="'negative'"):
        ObjectiveComposer.from_config(model, {"itm": {"weight": 1.0, "negative": "hard"}})
    with pytest.raises(ValueError, match="'temp'"):  # a weight-0 stanza is still checked
        ObjectiveComposer.from_config(
            model, {"mlm": {"weight": 1}, "contrastive": {"weight": 0, "temp": 1}}
        )
    with pytest.raises(ValueError, match="no 'weight'"):
        ObjectiveComposer.from_config(model, {"mlm": {}})
    comp = ObjectiveComposer.from_config(model, {"contrastive": {"weight": 1.0}})
    with pytest.raises(ValueError, match="no enabled objective"):
        comp({keys.INPUT_IDS: torch.ones(2, 4, dtype=torch.long)})
    assert {"mlm", "mim", "itm", "contrastive"} <= set(OBJECTIVES)


def test_seeded_steps_are_reproducible(model_factory, batch_factory):
    cfg = {"itm": {"weight": 1.0}, "contrastive": {"weight": 1.0, "patch_dropout": 0.5}}
    losses = []
    for _ in range(2):
        comp = ObjectiveComposer.from_config(model_factory(), cfg, seed=3).train()
        losses.append(comp(batch_factory()).loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)


def test_paired_batch_without_mim_keys_keeps_the_image_clean(model_factory, batch_factory):
    model = model_factory()
    comp = ObjectiveComposer.from_config(model, {"mlm": {"weight": 1.0}, "mim": {"weight": 1.0}})
    batch = batch_factory()
    del batch[keys.MIM_MASK], batch[keys.IMAGE_KEEP_IDS]
    out = comp(batch)
    assert set(out.losses) == {"mlm_loss"}


def test_per_step_generator_reproduces_negatives(model_factory, batch_factory):
    comp = ObjectiveComposer.from_config(model_factory(), {"itm": {"weight": 1.0}}, seed=0)
    batch = batch_factory(batch_size=6)
    first = comp(batch, generator=torch.Generator().manual_seed(5)).loss
    comp(batch)  # advances the composer's own generator, which must not matter below
    again = comp(batch, generator=torch.Generator().manual_seed(5)).loss
    torch.testing.assert_close(first, again, rtol=0, atol=0)


@pytest.mark.parametrize("swap", [False, True])
def test_flava_pairs_reuse_the_clean_tower_pass(model_factory, batch_factory, swap):
    """With towers and the text / image views in the step, ITM pairs are fused from those
    views' tower states: the same losses and gradients as encoding every pair from scratch,
    with each tower run once on the clean batch instead of again on the pairs."""
    objectives = {
        "itm": {"weight": 1.0, "negatives": "random", "neg_ratio": 0.5, "swap": swap},
        "contrastive": {"weight": 1.0},
    }
    batch, results = batch_factory(), []
    for planned in ({"pair", "text", "image"}, None):  # None: no plan, nothing reused
        model = model_factory(text_tower_layers=1, image_tower_layers=1)
        comp = ObjectiveComposer.from_config(model, objectives, seed=0)
        tower_calls = _count_calls(model.text_tower)
        views = StepViews(model, batch, comp.plan, torch.Generator().manual_seed(0), planned)
        losses = {
            n: h({v.kind: views[v.kind] for v in h.views}, batch).loss
            for n, h in comp.heads.items()
        }
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in comp.named_parameters() if p.grad is not None}
        results.append((losses, grads, tower_calls[0]))
    (losses, grads, calls), (ref_losses, ref_grads, ref_calls) = results
    assert (calls, ref_calls) == (1, 2)
    for k in ref_losses:
        torch.testing.assert_close(losses[k], ref_losses[k], atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], atol=1e-5, rtol=1e-4, msg=n)


FLAVA_MASKED_ITM = {
    "mlm": {"weight": 1.0},
    "mim": {"weight": 1.0, "target": "pixel", "masking": "mask_token", "decoder_depth": 0},
    "itm": {"weight": 1.0, "negatives": "random", "neg_ratio": 0.5, "masked_pass": True},
    "contrastive": {"weight": 1.0},
}


def test_itm_on_the_masked_pass_like_flava(model_factory, batch_factory):
    """FLAVA: ITM classifies the masked multimodal pass, whose negative rows got another image;
    MLM / MIM then learn from the matched rows only, and no pass of its own is run for ITM."""
    model = model_factory(text_tower_layers=1, image_tower_layers=1, use_mask_token=True)
    comp = ObjectiveComposer.from_config(model, FLAVA_MASKED_ITM, seed=0)
    fusion_calls = _count_calls(model.encoder)
    batch = batch_factory(batch_size=6, mim_count=8)
    views = StepViews(model, batch, comp.plan, torch.Generator().manual_seed(0))
    pair = views["pair"]
    assert views.computed == ["masked_pair", "pair"] and fusion_calls[0] == 1
    labels, neg = pair.itm_labels, pair.negatives
    assert pair.encoder is views["masked_pair"] and labels.tolist().count(0) == 3
    # every row by hand: [MASK]ed text, masked image, its own or the swapped-in image
    for t in range(6):
        swapped = (neg.text_index == t).nonzero().flatten()
        i = int(neg.image_index[swapped[0]]) if len(swapped) else t
        assert int(labels[t]) == int(i == t)
        out = model(
            input_ids=batch[keys.MLM_INPUT_IDS][t : t + 1],
            attention_mask=batch[keys.ATTENTION_MASK][t : t + 1],
            pixel_values=batch[keys.PIXEL_VALUES][i : i + 1],
            bool_masked_pos=batch[keys.MIM_MASK][t : t + 1],
        )
        torch.testing.assert_close(out.pooler_output[0], pair.encoder.pooler_output[t])
    # the masked-modeling losses ignore the negative rows' labels and use the positives'
    scored = views.loss_batch
    negative = labels == 0
    assert (scored[keys.MLM_LABELS][negative] == -100).all()
    assert not scored[keys.MIM_MASK][negative].any()
    assert torch.equal(scored[keys.MIM_MASK][~negative], batch[keys.MIM_MASK][~negative])
    losses = []
    for corrupt in (None, negative, ~negative):
        b = dict(batch)
        if corrupt is not None:  # new labels on some rows (same positions, other tokens)
            b[keys.MLM_LABELS] = torch.where(
                corrupt[:, None] & (b[keys.MLM_LABELS] != -100), 7, b[keys.MLM_LABELS]
            )
        losses.append(comp(b, generator=torch.Generator().manual_seed(0)).losses["mlm_loss"])
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_itm_masked_pass_bad_combinations(model_factory):
    model = model_factory(use_mask_token=True)
    itm = {"weight": 1.0, "masked_pass": True}
    with pytest.raises(ValueError, match="neg_ratio < 1"):
        ObjectiveComposer.from_config(model, {"itm": itm})
    with pytest.raises(ValueError, match="needs negatives=random"):
        ObjectiveComposer.from_config(model, {"itm": {**itm, "negatives": "hard"}})
    with pytest.raises(ValueError, match="mask-token MIM"):
        ObjectiveComposer.from_config(
            model, {"itm": {**itm, "neg_ratio": 0.5}, "mim": {"weight": 1.0, "masking": "drop"}}
        )


def test_conflicting_views_fail_at_build_naming_both_heads(model_factory):
    """MLM replaces masked tokens in the encoder input, M3AE drops them: one masked pass cannot
    do both, and the error says which heads asked and for what."""
    model = model_factory()
    with pytest.raises(ViewConflict, match=r"'mlm'.*'m3ae'.*masked_pair.*text_mode"):
        ObjectiveComposer.from_config(model, {"mlm": {"weight": 1.0}, "m3ae": {"weight": 1.0}})
    # compatible specs share one pass: MLM's text masking and MIM's image masking merge
    comp = ObjectiveComposer.from_config(
        model, {"mlm": {"weight": 1.0, "probability": 0.3}, "mim": {"weight": 1.0}}
    )
    merged = comp.plan["masked_pair"]
    assert merged.text_mode == "replace" and merged.text_masking.probability == 0.3
    assert merged.image_mode == "drop" and merged.image_masking.mask_ratio == 0.75


def test_masking_ratios_live_in_the_head_stanza(model_factory):
    model = model_factory(use_mask_token=True)
    comp = ObjectiveComposer.from_config(
        model,
        {
            "mlm": {"weight": 1.0, "probability": 0.4, "whole_word": True},
            "mim": {"weight": 1.0, "mask_ratio": 0.5, "block": True, "decoder_depth": 0},
        },
    )
    spec = comp.plan["masked_pair"]
    assert spec.text_masking.whole_word and spec.text_masking.probability == 0.4
    assert spec.image_masking.block and spec.image_masking.mask_ratio == 0.5
    assert spec.image_masking.grid == model.image.grid
    with pytest.raises(ValueError, match="mask_ratio"):
        ObjectiveComposer.from_config(model, {"mim": {"weight": 1.0, "mask_ratio": 1.5}})
