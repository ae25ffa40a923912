"""Shared toy-scale fixtures: one small synthetic world per test session."""

from __future__ import annotations

import pytest

from onetower.data import WorldSpec, ensure_synthetic_world, load_tokenizer

SPEC = WorldSpec(
    seed=3,
    n_train=48,
    n_val=16,
    image_size=32,
    vqa_train=60,
    vqa_val=10,
    nlvr2_train=40,
    nlvr2_val=10,
    text_length=24,
)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return ensure_synthetic_world(tmp_path_factory.mktemp("world") / "w", SPEC)


@pytest.fixture(scope="session")
def tokenizer(world):
    return load_tokenizer(world.tokenizer_dir)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf_cache"))
