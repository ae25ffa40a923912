"""Retrieval metrics (used by pretraining's held-out evaluation, zero-shot evaluation and
retrieval fine-tuning).

Two protocols:

- :func:`grouped_ranks` / :func:`recall_from_ranks`: the Karpathy protocol of the papers'
  tables (COCO 5k, Flickr30K 1k): I images, T captions grouped by image (``caption_image``).
  A text query's hit is its own image; an image query's hit is any of its captions. Scores are
  computed from embeddings in chunks of queries, so a 5k x 25k gallery never sits in memory;
  each query keeps the rank of its best hit and its top k candidates (for ITM re-ranking).
- :func:`recall_at_k`: one caption per image on an `(N, N)` matrix, a hit being an identical
  caption string (the pretraining demo's quick figure).

Ranks are 0-based: the number of candidates scored strictly above the query's best hit (ties
count for the hit), so R@K = share of queries with rank < K.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: ``score(query_rows, candidate_columns) -> (M,)`` re-ranking scores of (query, candidate)
#: index pairs, e.g. ITM logits; the direction decides which side is the image.
PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DirectionRanks:
    """One direction's ranks.

    Attributes:
        rank: long `(Q,)` 0-based rank of each query's best-ranked hit.
        top: long `(Q, k)` the k best candidates by score, best first (`(Q, 0)` if k = 0).
        top_scores: float `(Q, k)` their scores.
    """

    rank: torch.Tensor
    top: torch.Tensor
    top_scores: torch.Tensor


@dataclass
class GroupedRanks:
    """Both directions: ``i2t`` (image queries over captions), ``t2i`` (caption queries)."""

    i2t: DirectionRanks
    t2i: DirectionRanks

    def recall(self, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
        """``i2t_r1`` ... ``t2i_r10`` percentages and ``rsum`` (their sum, as BLIP reports)."""
        out = recall_from_ranks(self.i2t.rank, "i2t", ks) | recall_from_ranks(
            self.t2i.rank, "t2i", ks
        )
        out["rsum"] = sum(out.values())
        return out


def recall_from_ranks(rank: torch.Tensor, name: str, ks: tuple[int, ...]) -> dict[str, float]:
    """``{name}_r{k}``: percent of queries whose best hit ranks below k."""
    return {f"{name}_r{k}": 100.0 * float((rank < k).float().mean()) for k in ks}


def _direction(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    hit: Callable[[torch.Tensor], torch.Tensor],
    k: int,
    chunk: int,
) -> DirectionRanks:
    ranks, tops, top_scores = [], [], []
    for start in range(0, queries.shape[0], chunk):
        rows = torch.arange(start, min(start + chunk, queries.shape[0]), device=queries.device)
        scores = queries[rows].float() @ gallery.float().t()  # (q, G)
        hits = hit(rows)  # (q, G) bool
        best_hit = scores.masked_fill(~hits, float("-inf")).max(dim=1, keepdim=True).values
        ranks.append((scores > best_hit).sum(dim=1))  # (q,)
        s, i = scores.topk(min(k, scores.shape[1]), dim=1)  # (q, k)
        tops.append(i)
        top_scores.append(s)
    return DirectionRanks(torch.cat(ranks), torch.cat(tops), torch.cat(top_scores))


def grouped_ranks(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    caption_image: torch.Tensor,
    k: int = 0,
    chunk: int = 1024,
) -> GroupedRanks:
    """Karpathy-protocol ranks from embeddings, both ways.

    Args:
        image_emb: `(I, E)` image embeddings; text_emb: `(T, E)` caption embeddings (the
            score is their dot product: L2-normalise for cosine).
        caption_image: long `(T,)` index of each caption's image. Every image needs at least
            one caption (an image without one has no hit).
        k: also keep each query's top k candidates (for re-ranking).
        chunk: queries scored at once (memory is `chunk x gallery` floats).
    """
    cap = caption_image.to(image_emb.device).long()
    if cap.numel() != text_emb.shape[0]:
        raise ValueError(f"caption_image has {cap.numel()} rows for {text_emb.shape[0]} texts")
    if (torch.bincount(cap, minlength=image_emb.shape[0]) == 0).any():
        raise ValueError("every image needs at least one caption in caption_image")
    i2t = _direction(image_emb, text_emb, lambda rows: rows[:, None] == cap[None, :], k, chunk)
    t2i = _direction(
        text_emb,
        image_emb,
        lambda rows: cap[rows][:, None] == torch.arange(image_emb.shape[0], device=cap.device),
        k,
        chunk,
    )
    return GroupedRanks(i2t, t2i)


def rerank(
    ranks: DirectionRanks,
    hits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scorer: PairScorer,
    add_similarity: float = 0.0,
    batch_size: int = 256,
) -> DirectionRanks:
    """Re-order each query's top k by ``scorer`` (ALBEF / BLIP): the k candidates keep the
    first k places among themselves, the rest of the gallery keeps its order below them.

    Args:
        ranks: one direction's ranks with its top k (:func:`grouped_ranks` with ``k > 0``).
        hits: ``hits(query_rows (M,), candidates (M,)) -> bool (M,)`` whether a candidate is a
            hit for its query.
        scorer: the re-ranking score of (query, candidate) index pairs.
        add_similarity: weight of the first-stage score added to the re-ranking score (BLIP
            adds the contrastive similarity to the ITM score: 1.0; ALBEF uses ITM alone: 0).
        batch_size: pairs scored at once (memory: one encoder pass over that many pairs).

    Returns:
        the new ranks, with ``top`` / ``top_scores`` re-ordered the same way.
    """
    q, k = ranks.top.shape
    if k == 0:
        return ranks
    rows = torch.arange(q, device=ranks.top.device)[:, None].expand(q, k).reshape(-1)  # (q*k,)
    cols = ranks.top.reshape(-1)  # (q*k,)
    new = torch.cat(
        [
            scorer(rows[i : i + batch_size], cols[i : i + batch_size]).float()
            for i in range(0, rows.numel(), batch_size)
        ]
    ).view(q, k)
    new = new.to(ranks.top_scores.device) + add_similarity * ranks.top_scores.float()
    is_hit = hits(rows, cols).view(q, k)
    best = new.masked_fill(~is_hit, float("-inf")).max(dim=1, keepdim=True).values  # (q, 1)
    in_top = is_hit.any(dim=1)
    # a hit inside the top k: its place among the re-scored k; else its first-stage rank (>= k)
    rank = torch.where(in_top, (new > best).sum(dim=1), ranks.rank)
    order = new.argsort(dim=1, descending=True)
    return DirectionRanks(rank, ranks.top.gather(1, order), new.gather(1, order))


def chance_recall(n_gallery: int, hits_per_query: float, ks: tuple[int, ...]) -> dict[int, float]:
    """Expected R@K (%) of a random ranking: 1 - C(G - h, K) / C(G, K), h hits among G."""
    out = {}
    for k in ks:
        miss = 1.0
        h = hits_per_query
        for j in range(min(k, n_gallery)):
            miss *= max(0.0, (n_gallery - h - j) / (n_gallery - j))
        out[k] = 100.0 * (1.0 - miss)
    return out


def recall_at_k(
    i2t: torch.Tensor,
    t2i: torch.Tensor,
    captions: list[str],
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, float]:
    """R@K both ways, for N pairs where pair i is image i and caption i.

    Args:
        i2t: `(N images, N texts)` scores; t2i: `(N texts, N images)` scores (the transpose
            for a symmetric similarity; differs after re-ranking).
        captions: the N captions. A hit is a retrieved caption identical to the true one, so
            duplicate captions (common in synthetic data) are not misses.
        ks: the cut-offs.

    Returns:
        Percentages ``i2t_r1`` ... ``t2i_r10``.
    """
    n = len(captions)
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cap = torch.tensor([ids[c] for c in captions], device=i2t.device)  # (N,) caption class
    out = {}
    for name, scores in (("i2t", i2t), ("t2i", t2i)):
        order = scores.argsort(dim=1, descending=True)  # (N, N)
        hit = cap[order] == cap[:, None]  # (N, N) retrieved caption equals the true one
        first = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(cap, n))
        for k in ks:
            out[f"{name}_r{k}"] = 100.0 * float((first < k).float().mean())
    return out
