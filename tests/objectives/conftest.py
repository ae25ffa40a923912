"""Toy models and batches shared by the objective tests (width 64, 1-2 layers, 32 px)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from onetower import OneTowerConfig, OneTowerModel
from onetower.data import keys
from onetower.data.masking import keep_ids_from_mask

VOCAB, T, IMG, PATCH = 512, 16, 32, 8
N_PATCHES = (IMG // PATCH) ** 2


def tiny_model(**overrides) -> OneTowerModel:
    """A seeded tiny encoder (1 fusion layer unless overridden)."""
    torch.manual_seed(0)
    cfg = OneTowerConfig.from_size("tiny", **{"num_hidden_layers": 1, **overrides})
    return OneTowerModel(cfg)


def make_batch(
    batch_size: int = 4,
    seed: int = 0,
    mlm_prob: float = 0.3,
    mim_count: int = 6,
    text: bool = True,
    image: bool = True,
) -> dict[str, torch.Tensor]:
    """Random paired (or unpaired) batch with MLM labels, a MIM mask and keep ids."""
    g = torch.Generator().manual_seed(seed)
    b: dict[str, torch.Tensor] = {}
    if text:
        ids = torch.randint(5, VOCAB, (batch_size, T), generator=g)
        ids[:, 0] = 1  # CLS
        mask = torch.ones(batch_size, T, dtype=torch.long)
        mask[0, T - 5 :] = 0  # one padded sample
        selected = (torch.rand(batch_size, T, generator=g) < mlm_prob) & mask.bool()
        selected[:, 0] = False
        b[keys.INPUT_IDS], b[keys.ATTENTION_MASK] = ids, mask
        b[keys.MLM_INPUT_IDS] = torch.where(selected, torch.full_like(ids, 4), ids)
        b[keys.MLM_LABELS] = torch.where(selected, ids, torch.full_like(ids, -100))
        b[keys.TEXT_KEEP_IDS] = keep_ids_from_mask(selected | ~mask.bool())  # M3AE: dropped
    if image:
        b[keys.PIXEL_VALUES] = torch.randn(batch_size, 3, IMG, IMG, generator=g)
        order = torch.rand(batch_size, N_PATCHES, generator=g).argsort(1)
        masked = torch.zeros(batch_size, N_PATCHES, dtype=torch.bool)
        masked.scatter_(1, order[:, :mim_count], True)
        b[keys.MIM_MASK] = masked
        b[keys.IMAGE_KEEP_IDS] = order[:, mim_count:].sort(1).values
    return b


@pytest.fixture
def model_factory() -> Callable[..., OneTowerModel]:
    return tiny_model


@pytest.fixture
def batch_factory() -> Callable[..., dict[str, torch.Tensor]]:
    return make_batch
