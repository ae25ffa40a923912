"""Loaders: the same batch from in-memory, streaming and WebDataset; sharding; unpaired sources."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from onetower.data import (
    CachedDataset,
    ImageCollator,
    PairCollator,
    PatchMasking,
    SkipCounter,
    TextCollator,
    TextMasking,
    build_dataset,
    build_image_transform,
    interleave,
    keys,
    load_images,
    load_pairs,
    load_texts,
    load_webdataset,
    write_webdataset_shards,
)
from onetower.data.batch_masking import BatchMasker, step_generator


def _batches(source, tokenizer, batch_size=8, train=True):
    """The loader's batches, masked per step as the training loop masks them."""
    ds = build_dataset(source, build_image_transform(32, train=train), seed=5)
    loader = torch.utils.data.DataLoader(ds, batch_size, collate_fn=PairCollator(tokenizer, 24))
    masker = BatchMasker(tokenizer, TextMasking(), PatchMasking((4, 4), 0.5))
    batches = [masker(b, step_generator(11, step)) for step, b in enumerate(loader)]
    for b in batches:  # a tar stream's cursor: training's Stream keeps it, the model never sees it
        b.pop("__cursor__", None)
    return batches


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_same_batches_in_memory_streaming_webdataset(world, tokenizer, cache_dir, tmp_path):
    memory = load_pairs(world.pairs_dir, "train", cache_dir=cache_dir)
    streaming = load_pairs(world.pairs_dir, "train", streaming=True)
    write_webdataset_shards(world.split_dir("train"), tmp_path / "wds", shard_size=12)
    tars = load_pairs(tmp_path / "wds")
    assert not memory.streaming and streaming.streaming and tars.streaming
    assert tars.dataset.num_shards == 4
    ref = _batches(memory, tokenizer)
    assert len(ref) == 6 and set(ref[0]) == {
        keys.INPUT_IDS,
        keys.ATTENTION_MASK,
        keys.WORD_IDS,
        keys.PIXEL_VALUES,
        keys.IMAGE_IDS,
        keys.MLM_INPUT_IDS,
        keys.MLM_LABELS,
        keys.MIM_MASK,
        keys.IMAGE_KEEP_IDS,
    }
    assert ref[0][keys.IMAGE_IDS].tolist() == list(range(8))
    _assert_same(ref, _batches(streaming, tokenizer))
    _assert_same(ref, _batches(tars, tokenizer))
    _assert_same(ref, _batches(memory.to_streaming(num_shards=2), tokenizer))


def test_split_by_node_partitions_shards(world, tmp_path):
    write_webdataset_shards(world.split_dir("train"), tmp_path / "wds", shard_size=12)
    src = load_webdataset(tmp_path / "wds")
    parts = [[r["__key__"] for r in src.shard(rank, 2).dataset] for rank in range(2)]
    assert len(parts[0]) == len(parts[1]) == 24
    assert set(parts[0]).isdisjoint(parts[1])
    assert sorted(parts[0] + parts[1]) == [f"{i:06d}" for i in range(48)]


def test_two_workers_see_every_sample_once(world, tokenizer, tmp_path):
    write_webdataset_shards(world.split_dir("train"), tmp_path / "wds", shard_size=12)
    ds = build_dataset(load_webdataset(tmp_path / "wds"), build_image_transform(32, False))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=5, num_workers=2, collate_fn=PairCollator(tokenizer, 24)
    )
    ids = torch.cat([b[keys.IMAGE_IDS] for b in loader]).tolist()
    assert sorted(ids) == list(range(48))
    assert ds.counter.seen == 48  # counted inside the workers, visible here


def test_jsonl_and_parquet_pairs(world, cache_dir, tmp_path):
    rows = [json.loads(x) for x in (world.split_dir("train") / "metadata.jsonl").open()][:6]
    with open(tmp_path / "pairs.jsonl", "w") as f:
        for r in rows:  # absolute path in one row, relative in the others
            f.write(
                json.dumps(
                    {"image": str(world.split_dir("train") / r["file_name"]), "text": r["text"]}
                )
                + "\n"
            )
    table = pa.table(
        {
            "image": [(world.split_dir("train") / r["file_name"]).read_bytes() for r in rows],
            "text": [r["text"] for r in rows],
        }
    )
    pq.write_table(table, tmp_path / "pairs.parquet")
    tf = build_image_transform(32, train=False)
    for name in ("pairs.jsonl", "pairs.parquet"):
        src = load_pairs(tmp_path / name, cache_dir=cache_dir)
        ds = build_dataset(src, tf)
        got = [ds[i] for i in range(len(ds))]
        assert [g["text"] for g in got] == [r["text"] for r in rows]
        assert ds.counter.skipped == 0
        ref = tf(Image.open(world.split_dir("train") / rows[2]["file_name"]).convert("RGB"))
        assert torch.allclose(got[2]["pixel_values"], ref)


def test_text_only_and_image_only_sources(world, tokenizer, cache_dir, tmp_path):
    (tmp_path / "texts.txt").write_text("a red circle\n\nthe blue square above\n" * 4)
    texts = build_dataset(
        load_texts(tmp_path / "texts.txt", cache_dir=cache_dir), counter=SkipCounter(0.5, 10)
    )
    images = build_dataset(
        load_images(world.split_dir("validation"), cache_dir=cache_dir),
        build_image_transform(32, False),
    )
    text_keys = {keys.INPUT_IDS, keys.ATTENTION_MASK, keys.WORD_IDS}
    for batch in torch.utils.data.DataLoader(texts, 4, collate_fn=TextCollator(tokenizer, 24)):
        assert set(batch) == text_keys
    image_keys = {keys.PIXEL_VALUES, keys.IMAGE_IDS}
    for batch in torch.utils.data.DataLoader(images, 4, collate_fn=ImageCollator()):
        assert set(batch) == image_keys
    # The blank lines of the text file are skipped and counted, not fed to the model.
    assert texts.counter.counts() == {"empty_text": texts.counter.skipped}
    assert texts.counter.skipped > 0


def test_interleave_same_kind(world, cache_dir):
    a = load_pairs(world.pairs_dir, "train", cache_dir=cache_dir)
    b = load_pairs(world.pairs_dir, "validation", cache_dir=cache_dir)
    with pytest.raises(ValueError):
        interleave([a, b], [3, 1], seed=0)  # different folders: relative paths would break
    mixed = interleave([a, a], [3, 1], seed=0)
    assert len(mixed.dataset) >= 48


def test_cached_dataset_decodes_each_sample_once_within_its_budget(world, cache_dir):
    """The cache gives back what the dataset gives, decodes a cached index only once, stops
    caching at its budget (later samples are decoded every time) and hands out copies."""
    ds = build_dataset(
        load_pairs(world.pairs_dir, "train", cache_dir=cache_dir), build_image_transform(32, False)
    )
    calls = []

    class Counting(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            calls.append(i)
            return ds[i]

        def set_epoch(self, epoch):
            calls.append(("epoch", epoch))

    per_sample = ds[0]["pixel_values"].nbytes  # 3 x 32 x 32 float32; no other tensor
    cached = CachedDataset(Counting(), max_bytes=5 * per_sample)
    for _ in range(2):
        for i in range(8):
            got, ref = cached[i], ds[i]
            assert got.keys() == ref.keys() and got["text"] == ref["text"]
            assert torch.equal(got["pixel_values"], ref["pixel_values"])
    assert calls == [*range(8), 5, 6, 7]  # 0-4 cached, 5-7 over budget: decoded again
    assert cached.nbytes == 5 * per_sample and len(cached) == len(ds)
    cached[0]["text"] = "changed"
    assert cached[0]["text"] == ds[0]["text"]
    cached.set_epoch(3)
    assert calls[-1] == ("epoch", 3)
