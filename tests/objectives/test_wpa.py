"""Word-patch alignment: IPOT and the loss against a per-pair loop reference (ViLT's algorithm
written out on each pair's real positions alone, no padding)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onetower.data import keys
from onetower.objectives import PAIR, ObjectiveComposer, StepViews, build_objective
from onetower.objectives.wpa import ot_distance


def ipot_reference(cost: torch.Tensor, beta: float, iterations: int, k: int) -> torch.Tensor:
    """IPOT on one unpadded `(m, n)` cost (Xie et al. 2019, Algorithm 1): the plan `(m, n)`."""
    m, n = cost.shape
    sigma = torch.full((m,), 1.0 / m, dtype=torch.float64)
    plan = torch.ones(m, n, dtype=torch.float64)
    kernel = torch.exp(-cost.double() / beta)
    for _ in range(iterations):
        q = kernel * plan
        for _ in range(k):
            delta = torch.stack(
                [1.0 / (n * sum(q[i, j] * sigma[i] for i in range(m))) for j in range(n)]
            )
            sigma = torch.stack(
                [1.0 / (m * sum(q[i, j] * delta[j] for j in range(n))) for i in range(m)]
            )
        plan = sigma[:, None] * q * delta[None, :]
    return plan


def distance_reference(text: torch.Tensor, image: torch.Tensor, beta=0.5, iterations=50, k=1):
    cost = 1 - F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).t()  # (m, n)
    return (cost.double() * ipot_reference(cost, beta, iterations, k)).sum()


def test_ot_distance_matches_the_loop_on_padded_rows():
    g = torch.Generator().manual_seed(0)
    text, image = torch.randn(3, 5, 8, generator=g), torch.randn(3, 6, 8, generator=g)
    text_pad = torch.zeros(3, 5, dtype=torch.bool)
    image_pad = torch.zeros(3, 6, dtype=torch.bool)
    text_pad[1, 3:], image_pad[2, 4:] = True, True  # rows of other lengths
    got = ot_distance(text, image, text_pad, image_pad, iterations=20)
    for b in range(3):
        want = distance_reference(text[b][~text_pad[b]], image[b][~image_pad[b]], iterations=20)
        torch.testing.assert_close(got[b].double(), want, atol=1e-5, rtol=1e-4)


def test_wpa_loss_matches_the_loop_and_scores_itm_pairs(model_factory, batch_factory):
    model = model_factory()
    comp = ObjectiveComposer.from_config(
        model, {"itm": {"weight": 1.0, "neg_ratio": 0.5, "swap": True}, "wpa": {"weight": 0.1}}
    )
    assert comp.plan[PAIR] == comp.heads["itm"].views[0]  # WPA reads ITM's pairs: one pass
    batch = batch_factory(batch_size=4)
    views = StepViews(model, batch, comp.plan, torch.Generator().manual_seed(0))
    pair = views[PAIR]
    res = comp.heads["wpa"]({PAIR: pair}, batch)
    ids_mask = batch[keys.ATTENTION_MASK]
    total = 0.0
    for r, label in enumerate(pair.itm_labels.tolist()):
        real = ids_mask[r].bool().clone()
        real[0] = False  # [CLS]
        real[int(ids_mask[r].sum()) - 1] = False  # [SEP]: the last real token
        text = pair.encoder.tokens("text")[r][real]
        image = pair.encoder.tokens("image_patches")[r]
        d = distance_reference(text.detach(), image.detach())
        total += d if label == 1 else -d
    torch.testing.assert_close(res.loss.double(), total / 4, atol=1e-5, rtol=1e-4)
    assert set(res.metrics) == {"pos_dist", "neg_dist"}
    res.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_wpa_alone_draws_vilts_negatives(model_factory, batch_factory):
    comp = ObjectiveComposer.from_config(model_factory(), {"wpa": {"weight": 0.1}})
    out = comp(batch_factory(batch_size=4), generator=torch.Generator().manual_seed(0))
    assert out.views == ("pair",) and torch.isfinite(out.losses["wpa_loss"])


def test_wpa_options_are_checked(model_factory):
    import pytest

    with pytest.raises(ValueError, match="iterations"):
        build_objective("wpa", model_factory(), {"iterations": 0}, {})
