"""The head contract, checked for every registered objective."""

from __future__ import annotations

import math

import pytest
import torch

from onetower.objectives import (
    OBJECTIVES,
    Objective,
    ObjectiveComposer,
    ObjectiveOutput,
    ViewSpec,
)

#: every registered head alone, and each other head together with ITM (the head whose pair
#: view others share), so a newly registered objective is covered without editing this file
COMBOS = [(n,) for n in sorted(OBJECTIVES)] + [(n, "itm") for n in sorted(OBJECTIVES) if n != "itm"]


@pytest.mark.parametrize("names", COMBOS, ids="+".join)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_head_contract(names, batch_size, model_factory, batch_factory):
    model = model_factory()
    comp = ObjectiveComposer.from_config(model, {n: {"weight": 1.0} for n in names}).train()
    batch = batch_factory(batch_size=batch_size, mlm_prob=1.0)  # B = 1 still has MLM targets
    out = comp(batch)
    for name in names:
        head = comp.heads[name]
        assert isinstance(head, Objective)
        assert all(isinstance(v, ViewSpec) for v in head.views)
        loss = out.losses[f"{name}_loss"]
        assert loss.dim() == 0 and math.isfinite(loss.item())
        views = comp.views(batch, torch.Generator().manual_seed(0), [name])
        pixels = head.predict_pixels({v.kind: views[v.kind] for v in head.views}, batch)
        assert pixels is None or pixels.shape[:2] == (batch_size, 16)
    assert all(not m.requires_grad and m.dim() == 0 for m in out.metrics.values())
    out.loss.backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if batch_size > 1:  # with one pair the contrastive softmax has a single column: zero grad
        assert any(g.abs().sum() > 0 for g in grads), "no gradient reached the encoder"
    comp.after_optimizer_step()


def test_heads_return_objective_output(model_factory, batch_factory):
    from onetower.objectives import MASKED_PAIR, build_objective

    model = model_factory()
    head = build_objective("mlm", model, {}, {})
    batch = batch_factory()
    res = head({MASKED_PAIR: model(input_ids=batch["mlm_input_ids"])}, batch)
    assert isinstance(res, ObjectiveOutput)
