"""Samples/s of the training data pipeline on 224-px JPEG tar shards, per worker and with
workers; and our tar reader against the ``webdataset`` package (throughput, bad members,
resume) when that package is installed.

Writes img2dataset-layout shards (``<key>.jpg`` + ``.txt`` + ``.json``, JPEG quality 90) from
a synthetic world, then times the full pretraining pipeline per sample: tar read, JPEG decode,
timm RandomResizedCrop to ``--image-size`` + normalise, tokenise, collate, MLM + patch masks
(on the main process, as training draws them). Not a test: numbers depend on the machine.

    .venv/bin/python benchmarks/data_pipeline.py [--n 512] [--batch 32] [--workers 1 2]
        [--json runs/benchmarks/data_pipeline.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from onetower.data import (
    PairCollator,
    PatchMasking,
    SkipCounter,
    TextMasking,
    WorldSpec,
    build_dataset,
    build_image_transform,
    keys,
    load_tokenizer,
    load_webdataset,
    write_synthetic_world,
)
from onetower.data.batch_masking import BatchMasker, step_generator
from onetower.data.pipeline import SampleDecoder
from onetower.data.sources import Source


def write_jpeg_shards(world, out: Path, per_shard: int) -> list[str]:
    """The world's training pairs as img2dataset-layout JPEG shards."""
    folder = world.split_dir("train")
    rows = [json.loads(x) for x in (folder / "metadata.jsonl").open()]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(0, len(rows), per_shard):
        path = out / f"shards-{s // per_shard:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i, r in enumerate(rows[s : s + per_shard], start=s):
                buf = io.BytesIO()
                Image.open(folder / r["file_name"]).convert("RGB").save(buf, "JPEG", quality=90)
                key = f"{i:09d}"
                meta = json.dumps({"key": key, "caption": r["text"]}).encode()
                for ext, data in (
                    ("jpg", buf.getvalue()),
                    ("txt", r["text"].encode()),
                    ("json", meta),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def _rate(loader, masker) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for step, b in enumerate(loader):
        n += masker(b, step_generator(0, step))[keys.PIXEL_VALUES].shape[0]
    return n / (time.perf_counter() - start), n


class WdsDataset(torch.utils.data.IterableDataset):
    """The same decode + transform over the ``webdataset`` package's reader."""

    def __init__(self, shards, decode, handler) -> None:
        self.shards, self.decode, self.handler = shards, decode, handler

    def __iter__(self):
        import webdataset as wds

        ds = wds.WebDataset(
            self.shards, shardshuffle=False, handler=self.handler, empty_check=False
        )
        for s in ds:
            row = {"__key__": s["__key__"], "image": s.get("jpg"), "text": s.get("txt")}
            yield self.decode(row)


def loader_rates(shards, tokenizer, args, workers: int) -> dict[str, float]:
    """Best of ``--repeats`` passes per reader, the readers alternating (a shared, noisy machine
    and a warm file cache favour whichever runs later)."""
    tf = build_image_transform(args.image_size, train=True)
    collate = PairCollator(tokenizer, 24, pad_to_max_length=True)
    grid = (args.image_size // 16, args.image_size // 16)
    masker = BatchMasker(tokenizer, TextMasking(), PatchMasking(grid, 0.75))
    datasets = {
        "ours": build_dataset(load_webdataset(shards, shuffle_buffer=256), tf, SkipCounter())
    }
    try:
        import webdataset as wds

        src = Source(None, "pairs", "image", "text", key_column="__key__")
        datasets["webdataset"] = WdsDataset(shards, SampleDecoder(src, tf), wds.reraise_exception)
    except ImportError:
        pass
    out: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, ds in datasets.items():
            loader = torch.utils.data.DataLoader(
                ds, batch_size=args.batch, num_workers=workers, collate_fn=collate
            )
            rate, n = _rate(loader, masker)
            assert n >= args.n - workers * args.batch, n
            out[name] = max(out.get(name, 0.0), rate)
    return out


def bad_members(tmp: Path, good: list[str]) -> dict[str, object]:
    """Three shards: an invalid UTF-8 caption in the first, the second cut in half, a good third.
    How many samples each reader delivers, and whether it stops the run."""
    import shutil

    bad = tmp / "bad"
    bad.mkdir()
    paths = [str(bad / f"b-{i}.tar") for i in range(3)]
    for p, g in zip(paths, good[:3], strict=True):
        shutil.copy(g, p)
    # rewrite shard 0 with one bad caption
    with tarfile.open(good[0]) as src, tarfile.open(paths[0], "w") as dst:
        for k, m in enumerate(src.getmembers()):
            data = src.extractfile(m).read()
            if k == 1:  # the first .txt
                data = b"caption \xff\xfe broken"
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    data = Path(paths[1]).read_bytes()
    Path(paths[1]).write_bytes(data[: len(data) // 2])
    result: dict[str, object] = {}
    counter = SkipCounter(max_bad_fraction=1.0)
    src = load_webdataset(paths)
    decode = SampleDecoder(src, build_image_transform(32, train=False))
    ds = build_dataset(src, build_image_transform(32, train=False), counter)
    result["ours"] = {"delivered": sum(1 for _ in ds), "counted_bad": counter.skipped}
    try:
        import webdataset as wds
    except ImportError:
        return result
    for name, handler in (("reraise", wds.reraise_exception), ("warn", wds.warn_and_continue)):
        n, error = 0, None
        try:
            for s in wds.WebDataset(paths, shardshuffle=False, handler=handler, empty_check=False):
                row = {"__key__": s["__key__"], "image": s.get("jpg"), "text": s.get("txt")}
                try:
                    decode(row)
                    n += 1
                except Exception:  # noqa: BLE001 - counting what the package hands over
                    pass
        except Exception as e:  # noqa: BLE001
            error = f"{type(e).__name__}: {str(e)[:120]}"
        result[f"webdataset_{name}"] = {"delivered": n, "error": error}
    return result


def resume_cost(shards, args) -> dict[str, float]:
    """Seconds to get to the middle of an epoch: our row skip (no decode) vs decoding."""
    src = load_webdataset(shards, shuffle_buffer=256)
    half = args.n // 2
    start = time.perf_counter()
    src.dataset.skip({0: half})
    next(iter(src.dataset))
    skip_s = time.perf_counter() - start
    ds = build_dataset(
        load_webdataset(shards, shuffle_buffer=256), build_image_transform(args.image_size, True)
    )
    start = time.perf_counter()
    for i, _ in enumerate(ds):
        if i >= half:
            break
    return {"rows": half, "ours_skip_s": skip_s, "decode_and_drop_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=512, help="samples written")
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="passes per reader (best kept)")
    parser.add_argument("--json", default="runs/benchmarks/data_pipeline.json")
    args = parser.parse_args()
    report: dict[str, object] = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "n": args.n,
        "batch": args.batch,
        "image_size": args.image_size,
    }
    with tempfile.TemporaryDirectory() as tmp:
        spec = WorldSpec(
            n_train=args.n,
            n_val=0,
            image_size=args.image_size,
            vqa_train=0,
            vqa_val=0,
            nlvr2_train=0,
            nlvr2_val=0,
        )
        world = write_synthetic_world(Path(tmp) / "world", spec)
        shards = write_jpeg_shards(world, Path(tmp) / "shards", args.per_shard)
        tokenizer = load_tokenizer(world.tokenizer_dir)
        rates = {}
        for w in args.workers:
            r = loader_rates(shards, tokenizer, args, w)
            rates[w] = r
            for name, v in r.items():
                print(f"{name:10s} {w} worker(s): {v:7.1f} samples/s ({v / w:6.1f} per worker)")
        report["load_average"] = os.getloadavg()
        report["samples_per_s"] = {str(w): r for w, r in rates.items()}
        report["per_worker"] = {str(w): {k: v / w for k, v in r.items()} for w, r in rates.items()}
        report["bad_members"] = bad_members(Path(tmp), shards)
        print("bad members:", json.dumps(report["bad_members"]))
        report["resume"] = resume_cost(shards, args)
        print("resume:", json.dumps(report["resume"]))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
