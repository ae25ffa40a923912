"""Tar shards: names as users give them, split by process and worker, shuffled, resampled."""

from __future__ import annotations

import itertools

import pytest
import torch

from onetower.data import expand_shards, load_webdataset, write_webdataset_shards


@pytest.fixture(scope="module")
def shards(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("wds")
    write_webdataset_shards(world.split_dir("train"), out, shard_size=6)  # 48 rows: 8 shards
    return out


def test_expand_shards(shards):
    every = [str(shards / f"shard-{i:05d}.tar") for i in range(8)]
    assert expand_shards(shards) == every
    assert expand_shards(f"{shards}/shard-{{00000..00007}}.tar") == every
    assert expand_shards(f"{shards}/shard-0000[0-3].tar") == every[:4]
    assert expand_shards(f"{every[1]},{every[0]}") == [every[1], every[0]]
    assert expand_shards([every[2]]) == [every[2]]
    assert expand_shards(f"{shards}/shard-{{00000,00005}}.tar") == [every[0], every[5]]
    assert expand_shards("s3://bucket/cc3m-{000..002}.tar")[-1] == "s3://bucket/cc3m-002.tar"
    with pytest.raises(
        FileNotFoundError,
        match=r"2 of the 10 shards .* do not exist: .*shard-00008.tar, .*shard-00009.tar",
    ):
        expand_shards(f"{shards}/shard-{{00000..00009}}.tar")
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        expand_shards(f"{shards}/nope-*.tar")


def _keys(src, rank, world, workers, epoch=0):
    ds = src.shard(rank, world).dataset
    ds.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=workers, collate_fn=lambda r: r["__key__"]
    )
    return list(loader)


@pytest.mark.parametrize("buffer", [0, 16])
def test_two_ranks_two_workers_see_every_sample_once_per_epoch(shards, buffer):
    src = load_webdataset(shards, shuffle_buffer=buffer, seed=3)
    epochs = []
    for epoch in range(2):
        parts = [_keys(src, rank, 2, 2, epoch) for rank in range(2)]
        seen = parts[0] + parts[1]
        assert sorted(seen) == [f"{i:06d}" for i in range(48)]  # each key exactly once
        assert len(parts[0]) == len(parts[1]) == 24
        epochs.append(seen)
    if buffer:  # a new order every epoch, the same for the same (seed, epoch)
        assert epochs[0] != epochs[1]
        assert _keys(src, 0, 2, 2, 1) == _keys(src, 0, 2, 2, 1)
    else:
        assert epochs[0] == epochs[1]


def test_resampled_mode_draws_forever(shards):
    src = load_webdataset(shards, resampled=True, seed=0)
    rows = [r["__key__"] for r in itertools.islice(iter(src.dataset), 200)]
    assert len(rows) == 200 and len(set(rows)) < 48 + 1  # drawn with replacement


def test_skip_resumes_a_worker_stream_exactly(shards):
    src = load_webdataset(shards, shuffle_buffer=16, seed=1)
    full = [r["__key__"] for r in src.dataset]
    src.dataset.skip({0: 17})  # epoch 0, one worker
    assert [r["__key__"] for r in src.dataset] == full[17:]
