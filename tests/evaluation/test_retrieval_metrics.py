"""The Karpathy-protocol retrieval metric against loop references on grouped toy data."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from onetower.retrieval_metrics import chance_recall, grouped_ranks, rerank


def loop_recall(img: torch.Tensor, txt: torch.Tensor, owner: list[int], k: int) -> tuple:
    """ALBEF's evaluation loop: i2t rank = best position of any own caption in the argsort;
    t2i rank = position of the own image."""
    sim = img @ txt.t()
    i2t_hits = 0
    for i in range(sim.shape[0]):
        order = sim[i].argsort(descending=True).tolist()
        rank = min(order.index(t) for t, o in enumerate(owner) if o == i)
        i2t_hits += rank < k
    t2i_hits = 0
    for t in range(sim.shape[1]):
        order = sim[:, t].argsort(descending=True).tolist()
        t2i_hits += order.index(owner[t]) < k
    return 100.0 * i2t_hits / sim.shape[0], 100.0 * t2i_hits / sim.shape[1]


@pytest.mark.parametrize("chunk", [3, 1024])
def test_grouped_recall_matches_a_loop_reference(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    # 12 images with 1 to 5 captions each (several captions per image, and single ones)
    owner = [i for i in range(12) for _ in range(1 + i % 5)]
    img = torch.randn(12, 8, generator=g)
    txt = img[torch.tensor(owner)] + 1.5 * torch.randn(len(owner), 8, generator=g)
    ranks = grouped_ranks(img, txt, torch.tensor(owner), k=4, chunk=chunk)
    got = ranks.recall(ks=(1, 3, 5, 10))
    for k in (1, 3, 5, 10):
        i2t, t2i = loop_recall(img, txt, owner, k)
        assert got[f"i2t_r{k}"] == pytest.approx(i2t)
        assert got[f"t2i_r{k}"] == pytest.approx(t2i)
    assert 0 < got["i2t_r1"] < 100 and 0 < got["t2i_r1"] < 100  # a real test, not saturated
    # an image whose every caption is retrieved perfectly except the best one still hits
    assert ranks.i2t.top.shape == (12, 4) and ranks.t2i.top.shape == (len(owner), 4)


def test_an_image_hits_with_any_of_its_captions() -> None:
    img = torch.eye(3)
    # image 0 owns captions 0 and 1; caption 0 points elsewhere, caption 1 at image 0
    txt = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    r = grouped_ranks(img, txt, torch.tensor([0, 0, 1, 2]))
    assert r.i2t.rank.tolist()[0] == 0  # caption 1 is its best hit
    assert r.t2i.rank.tolist()[0] > 0  # caption 0's own image is not first
    with pytest.raises(ValueError, match="at least one caption"):
        grouped_ranks(torch.eye(4), txt, torch.tensor([0, 0, 1, 2]))


def test_rerank_matches_a_full_matrix_reference() -> None:
    g = torch.Generator().manual_seed(1)
    owner = [i for i in range(10) for _ in range(1 + i % 3)]
    cap = torch.tensor(owner)
    img = torch.randn(10, 6, generator=g)
    txt = img[cap] + torch.randn(len(owner), 6, generator=g)
    itm = torch.randn(10, len(owner), generator=g)  # a re-ranking score per (image, text)
    k = 4
    ranks = grouped_ranks(img, txt, cap, k=k)
    new = rerank(
        ranks.i2t,
        lambda q, c: cap[c] == q,
        lambda q, c: itm[q, c],
        add_similarity=0.5,
    )
    sim = img @ txt.t()
    for i in range(10):  # reference: top k by sim re-scored, placed above the rest
        top = sim[i].topk(k).indices
        full = sim[i] - sim[i].max() - 100.0
        full[top] = itm[i, top] + 0.5 * sim[i, top] + 100.0
        order = full.argsort(descending=True).tolist()
        assert new.rank[i] == min(order.index(t) for t in range(len(owner)) if owner[t] == i)
    t_new = rerank(ranks.t2i, lambda q, c: cap[q] == c, lambda q, c: itm[c, q])
    for t in range(len(owner)):
        top = sim[:, t].topk(k).indices
        full = sim[:, t] - sim[:, t].max() - 100.0
        full[top] = itm[top, t] + 100.0
        assert t_new.rank[t] == full.argsort(descending=True).tolist().index(owner[t])


def test_chance_recall_is_the_hypergeometric_miss_complement() -> None:
    got = chance_recall(50, 5, ks=(1, 10))
    assert got[1] == pytest.approx(10.0)
    miss = math.comb(45, 10) / math.comb(50, 10)
    assert got[10] == pytest.approx(100 * (1 - miss))
    # brute force on a tiny gallery
    hits = sum(any(x < 2 for x in c) for c in itertools.combinations(range(6), 3))
    assert chance_recall(6, 2, ks=(3,))[3] == pytest.approx(100 * hits / math.comb(6, 3))
