"""ITM negative sampling: random in-batch swaps (ViLT / UNITER) or hard negatives (ALBEF).

Both draw one column per row as ``torch.multinomial`` does, under an explicit generator, from a
`(B, B)` weight matrix whose forbidden entries (a sample's own pair, and pairs sharing an image
when ``IMAGE_IDS`` is known) are exactly zero, so a negative can never be the positive. Rows
with no allowed candidate (B = 1, or one image in the whole batch) get no negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from onetower.data import keys


@dataclass
class NegativePairs:
    """Indices into the batch of the negative (text, image) pairs, each long `(K,)`."""

    text_index: torch.Tensor
    image_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.text_index.numel())


def allowed_pairs(
    batch_size: int, image_ids: torch.Tensor | None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Bool `(B, B)`: True where (row, column) may form a negative (not the same image)."""
    if image_ids is None:
        return ~torch.eye(batch_size, dtype=torch.bool, device=device)
    ids = image_ids.to(device)
    return ids[:, None] != ids[None, :]


def draw(weights: torch.Tensor, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One column per selected row, drawn proportionally to ``weights[rows]`` `(K, B)`.

    Sampling runs on the generator's device (CPU by default) so a seed reproduces it anywhere.
    """
    w = weights[rows].detach().float().to(generator.device)  # (K, B)
    if w.numel() == 0:
        return rows.new_zeros(0)
    # The exponential race torch.multinomial(w, 1) runs, without its input checks: those call
    # .item() (a host sync on every step). Same generator draws -> the same columns. Weights
    # here are >= 0 with a positive sum per row by construction.
    race = torch.empty_like(w).exponential_(generator=generator)  # (K, B)
    return (w / race).argmax(dim=1).to(rows.device)


def random_negatives(
    batch_size: int,
    ratio: float,
    generator: torch.Generator,
    image_ids: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> NegativePairs:
    """Pair ``round(ratio * B)`` random texts with a uniformly drawn *other* image.

    Args:
        batch_size: B.
        ratio: negatives per positive, in (0, 1].
        generator: randomness source.
        image_ids: long `(B,)` image identity; same-image pairs are never negatives.
        device: device of the returned indices.
    """
    allowed = allowed_pairs(batch_size, image_ids, device).float()  # (B, B)
    order = torch.randperm(batch_size, generator=generator).to(allowed.device)
    rows = order[: round(ratio * batch_size)]
    rows = rows[allowed[rows].sum(1) > 0]  # rows with some other image to swap in
    return NegativePairs(text_index=rows, image_index=draw(allowed, rows, generator))


def hard_negatives(
    sim_i2t: torch.Tensor,
    generator: torch.Generator,
    image_ids: torch.Tensor | None = None,
) -> NegativePairs:
    """ALBEF: for every text an image drawn from softmax(similarity), and vice versa.

    Args:
        sim_i2t: scaled similarities `(B, B)` (image rows, text columns); detached here.
        generator: randomness source.
        image_ids: long `(B,)`; pairs that share an image are zeroed like the diagonal.

    Returns:
        up to 2B pairs: (text t, hard image for t) then (hard text for i, image i).
    """
    sim = sim_i2t.detach().float()
    allowed = allowed_pairs(sim.shape[0], image_ids, sim.device)  # (B, B), symmetric
    # Softmax over the allowed entries only: proportional to ALBEF's softmax-then-zero, but a
    # dominant positive cannot underflow every allowed weight to 0. All-forbidden rows -> 0.
    w_i2t = sim.masked_fill(~allowed, float("-inf")).softmax(dim=1).nan_to_num(0.0)
    w_t2i = sim.t().masked_fill(~allowed, float("-inf")).softmax(dim=1).nan_to_num(0.0)
    all_rows = torch.arange(sim.shape[0], device=sim.device)
    t_rows = all_rows[w_t2i.sum(1) > 0]
    i_rows = all_rows[w_i2t.sum(1) > 0]
    hard_images = draw(w_t2i, t_rows, generator)
    hard_texts = draw(w_i2t, i_rows, generator)
    return NegativePairs(
        text_index=torch.cat([t_rows, hard_texts]), image_index=torch.cat([hard_images, i_rows])
    )


@dataclass(frozen=True)
class RandomNegatives:
    """In-batch random negatives (ViLT / UNITER / FLAVA) as a ``pair`` view's sampler.

    Attributes:
        ratio: negatives per positive, in (0, 1].
    """

    ratio: float = 1.0
    #: reads no view: the draw depends on the batch size and image ids alone
    views: tuple = ()

    def __call__(self, batch: dict, views: dict, generator: torch.Generator) -> NegativePairs:
        ids = batch[keys.INPUT_IDS]
        return random_negatives(
            ids.shape[0], self.ratio, generator, batch.get(keys.IMAGE_IDS), ids.device
        )
