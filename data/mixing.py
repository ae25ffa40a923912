"""Mix batches from several loaders (e.g. pairs, text-only, image-only) by sampling ratios."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch


@dataclass
class MixedBatch:
    """One batch and the name of the source it came from (heads pick views by source)."""

    source: str
    batch: dict[str, torch.Tensor]


class MixedBatches:
    """Each step draws a source with probability proportional to its ratio, then its next batch.

    Batches are never mixed across sources, so a text-only batch has no image keys. Exhausted
    loaders restart (a new epoch of that loader); iteration stops after ``num_steps``.

    Args:
        loaders: name -> iterable of batch dicts (usually a DataLoader).
        ratios: name -> sampling weight (need not sum to 1).
        num_steps: batches per pass over this object.
        seed: seed of the source choice; pass a different one per epoch for new orders.
    """

    def __init__(
        self,
        loaders: dict[str, Iterable[dict[str, torch.Tensor]]],
        ratios: dict[str, float],
        num_steps: int,
        seed: int = 0,
    ) -> None:
        if set(loaders) != set(ratios):
            raise ValueError(f"ratios {sorted(ratios)} must name the loaders {sorted(loaders)}")
        if any(r < 0 for r in ratios.values()) or sum(ratios.values()) <= 0:
            raise ValueError(f"ratios must be >= 0 with a positive sum: {ratios}")
        self.loaders, self.ratios = loaders, ratios
        self.num_steps, self.seed = num_steps, seed

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self) -> Iterator[MixedBatch]:
        rng = random.Random(self.seed)
        names = sorted(self.loaders)
        weights = [self.ratios[n] for n in names]
        iterators = {n: iter(self.loaders[n]) for n in names}
        for _ in range(self.num_steps):
            name = rng.choices(names, weights=weights)[0]
            try:
                batch = next(iterators[name])
            except StopIteration:
                iterators[name] = iter(self.loaders[name])
                batch = next(iterators[name])
            yield MixedBatch(name, batch)
