"""Bad input is converted or skipped and counted, never crashes silently or loses data."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from onetower.data import (
    BadDataError,
    PairCollator,
    SkipCounter,
    build_dataset,
    build_image_transform,
    keys,
    load_pairs,
    load_webdataset,
)
from onetower.data.robust import decode_image


def _png(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(img):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _odd_images():
    """Decodable odd images and the normalised value their centre pixel must have."""
    gray16 = Image.fromarray(np.full((16, 16), 65535, np.uint16))  # 16-bit white
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 1 = blue
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red
    return {
        "cmyk.jpg": (_jpeg(Image.new("CMYK", (16, 16), (0, 0, 0, 0))), (1, 1, 1)),
        "gray16.png": (_png(gray16), (1, 1, 1)),
        "palette.png": (_png(palette), (-1, -1, 1)),
        "rgba.png": (_png(rgba), (1, 1, 1)),
        "gray.png": (_png(Image.new("L", (16, 16), 0)), (-1, -1, -1)),
        "tiny.png": (_png(Image.new("RGB", (1, 1), (255, 0, 0))), (1, -1, -1)),
        "panorama.png": (_png(Image.new("RGB", (6000, 40), (0, 255, 0))), (-1, 1, -1)),
    }


def _bad_folder(root, good_dir):
    good = [json.loads(x) for x in (good_dir / "metadata.jsonl").open()][:12]
    rows = []
    for r in good:
        (root / r["file_name"]).write_bytes((good_dir / r["file_name"]).read_bytes())
        rows.append(json.dumps(r).encode())
    ok_png = (good_dir / good[0]["file_name"]).read_bytes()
    ok_jpg = _jpeg(Image.open(good_dir / good[0]["file_name"]))
    files = {
        "corrupt.png": b"this is not an image at all" * 10,
        "truncated.png": ok_png[: len(ok_png) // 2],
        "truncated.jpg": ok_jpg[: len(ok_jpg) // 2],
        "empty.png": b"",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    for name, (data, _) in _odd_images().items():
        (root / name).write_bytes(data)
        files[name] = data
    for name in [*files, "missing.png"]:
        rows.append(json.dumps({"file_name": name, "text": f"caption of {name}"}).encode())
    texts = {"": "empty", "  \n\t ": "space", "word " * 5000: "long"}
    for i, text in enumerate(texts):
        rows.append(json.dumps({"file_name": good[i]["file_name"], "text": text}).encode())
    rows.append(b'{"file_name": "' + good[3]["file_name"].encode() + b'", "text": "bad \xff\xfe"}')
    (root / "metadata.jsonl").write_bytes(b"\n".join(rows) + b"\n")
    return [r["text"] for r in good]


EXPECTED = {
    "missing_file": 1,
    "empty_file": 1,
    "undecodable": 1,
    "truncated": 2,
    "empty_text": 2,
    "invalid_utf8": 1,
}
N_GOOD = 12 + len(_odd_images()) + 1  # + the long caption, truncated


@pytest.fixture
def bad_dir(tmp_path, world):
    good_texts = _bad_folder(tmp_path, world.split_dir("train"))
    return tmp_path, good_texts


def test_every_bad_case_streaming(bad_dir, tokenizer):
    root, _ = bad_dir
    counter = SkipCounter(max_bad_fraction=0.5, min_samples=10)
    ds = build_dataset(load_pairs(root, streaming=True), build_image_transform(32, False), counter)
    samples = list(ds)
    assert len(samples) == N_GOOD
    assert counter.counts() == EXPECTED and counter.seen == N_GOOD + sum(EXPECTED.values())
    summary = counter.summary()
    assert summary.startswith(f"skipped {sum(EXPECTED.values())} of {counter.seen}")
    assert "truncated=2" in summary and "invalid_utf8=1" in summary
    by_text = {s["text"]: s for s in samples}
    for name, (_, centre) in _odd_images().items():
        px = by_text[f"caption of {name}"]["pixel_values"]
        assert px.shape == (3, 32, 32)
        assert torch.allclose(
            px[:, 16, 16], torch.tensor(centre, dtype=torch.float32), atol=0.05
        ), name
    batch = PairCollator(tokenizer, 24)(samples)
    assert batch[keys.INPUT_IDS].shape == (N_GOOD, 24)  # the long caption is cut to T
    long_row = [s["text"].startswith("word word") for s in samples].index(True)
    assert batch[keys.INPUT_IDS][long_row, -1] == tokenizer.sep_token_id


def test_every_bad_case_in_memory(bad_dir, cache_dir):
    root, good_texts = bad_dir
    counter = SkipCounter(max_bad_fraction=0.5, min_samples=10)
    ds = build_dataset(
        load_pairs(root, cache_dir=cache_dir), build_image_transform(32, True), counter
    )
    got = [ds[i] for i in range(len(ds))]
    assert all(g is not None for g in got)  # bad rows are replaced by the next good one
    texts = {g["text"] for g in got}
    assert set(good_texts) <= texts and len(texts) == N_GOOD
    assert counter.counts() == EXPECTED  # each bad row counted once


def test_too_much_bad_data_is_a_clear_error(bad_dir):
    root, _ = bad_dir
    ds = build_dataset(
        load_pairs(root, streaming=True),
        build_image_transform(32, False),
        SkipCounter(max_bad_fraction=0.1, min_samples=5),
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=list)
    with pytest.raises(BadDataError, match="max_bad_fraction"):
        list(loader)


def test_webdataset_bad_members_and_truncated_shard(world, tmp_path):
    good = [json.loads(x) for x in (world.split_dir("train") / "metadata.jsonl").open()][:8]

    def shard(path, items):
        with tarfile.open(path, "w") as tar:
            for name, data in items:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    png = [(world.split_dir("train") / r["file_name"]).read_bytes() for r in good]
    items = []
    for i in range(4):
        text = b"bad \xff caption" if i == 1 else good[i]["text"].encode()
        items += [(f"{i:06d}.png", png[i]), (f"{i:06d}.txt", text)]
    shard(tmp_path / "a.tar", items)
    items = []
    for i in range(4, 8):
        items += [(f"{i:06d}.png", png[i]), (f"{i:06d}.txt", good[i]["text"].encode())]
    shard(tmp_path / "b.tar", items)
    data = (tmp_path / "b.tar").read_bytes()
    (tmp_path / "b.tar").write_bytes(data[: len(data) // 2])  # truncated mid-shard
    items = []
    for i in range(2):
        items += [(f"{100 + i:06d}.png", png[i]), (f"{100 + i:06d}.txt", b"a caption")]
    shard(tmp_path / "c.tar", items)
    counter = SkipCounter(max_bad_fraction=0.9, min_samples=1)
    ds = build_dataset(load_webdataset(tmp_path), build_image_transform(32, False), counter)
    ids = [s["image_id"] for s in ds]
    assert ids[:3] == [0, 2, 3]  # shard a: the invalid UTF-8 caption is skipped, not fatal
    assert 4 in ids and 7 not in ids  # shard b: read up to where it was cut
    assert ids[-2:] == [100, 101]  # shard c is still read after the truncated one
    assert counter.counts()["invalid_utf8"] == 1


def test_decode_image_rejects_decompression_bombs(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    from onetower.data.robust import SkipSample

    with pytest.raises(SkipSample) as err:
        decode_image(_png(Image.new("RGB", (100, 100))))
    assert err.value.reason == "too_large"
