"""The README's own-data commands, run through ``pretrain(...)`` on small data written here in
the official layouts: tar shards (img2dataset's members), JSONL, Parquet, an imagefolder,
streaming on and off, a weighted mix; and the bad-data cases."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from onetower.data import BadDataError, WorldSpec, ensure_synthetic_world
from onetower.pretraining import pretrain
from onetower.training.config import ConfigError

from ..conftest import debug_config

SPEC = WorldSpec(
    seed=5,
    n_train=32,
    n_val=8,
    image_size=32,
    text_length=16,
    vqa_train=8,
    vqa_val=4,
    nlvr2_train=8,
    nlvr2_val=4,
)
FAST = ("train.max_steps=2", "train.log_every=1", "eval.max_samples=8", "eval.batch_size=8")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ensure_synthetic_world(tmp_path_factory.mktemp("own") / "world", SPEC)


def rows(world, split="train"):
    folder = world.split_dir(split)
    return folder, [json.loads(x) for x in (folder / "metadata.jsonl").open()]


def write_tar(path: Path, items: list[tuple[str, dict[str, bytes]]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, members in items:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def encoded(path: Path, fmt: str, size: tuple[int, int] | None = None) -> bytes:
    img = Image.open(path).convert("RGB")
    if size:
        img = img.resize(size)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def img2dataset_shards(world, out: Path, n_shards=4, split="train", prefix="") -> Path:
    """img2dataset's layout: <key>.jpg|png|webp + <key>.txt + <key>.json, keys 000000123."""
    out.mkdir(parents=True, exist_ok=True)
    folder, rs = rows(world, split)
    per = -(-len(rs) // n_shards)
    fmts = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
    for s in range(n_shards):
        items = []
        for i, r in enumerate(rs[s * per : (s + 1) * per], start=s * per):
            ext = list(fmts)[i % 3]
            meta = {"key": f"{prefix}{i:09d}", "caption": r["text"], "status": "success"}
            members = {ext: encoded(folder / r["file_name"], fmts[ext])}
            if i % 4:  # the caption from .txt, else only from the json
                members["txt"] = r["text"].encode()
            members["json"] = json.dumps(meta).encode()
            items.append((f"{prefix}{i:09d}", members))
        write_tar(out / f"shards-{s:06d}.tar", items)
    return out


def run(tmp_path, world, *overrides, recipe="vilt_like"):
    cfg = debug_config(
        recipe,
        tmp_path,
        f"data.tokenizer={world.tokenizer_dir}",
        *FAST,
        *overrides,
        world=tmp_path / "no_world",
    )
    result = pretrain(cfg)
    assert not (tmp_path / "no_world").exists()  # the synthetic world was never written
    return result


@pytest.fixture(scope="module")
def shards(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return img2dataset_shards(world, root / "train"), img2dataset_shards(
        world, root / "val", 1, "validation"
    )


@pytest.mark.parametrize(
    "form", ["file", "folder", "brace", "glob", "list"], ids=lambda f: f"tar-{f}"
)
def test_tar_shards_as_users_name_them(form, shards, world, tmp_path):
    train, val = shards
    spec = {
        "file": f"{train}/shards-000000.tar",
        "folder": str(train),
        "brace": f"{train}/shards-{{000000..000003}}.tar",
        "glob": f"{train}/shards-*.tar",
        "list": f"{train}/shards-000000.tar,{train}/shards-000001.tar",
    }[form]
    result = run(
        tmp_path,
        world,
        f"data.pairs={spec}",
        f"data.val_pairs={val}/shards-000000.tar",  # a tar held out: evaluation needs no len
        "data.num_workers=2" if form == "folder" else "data.num_workers=0",
    )
    assert result.steps == 2 and (result.output_dir / "final").is_dir()
    assert "eval/itm_loss" in result.metrics and "eval/mlm_loss" in result.metrics


def test_tables_imagefolder_and_streaming(world, tmp_path):
    folder, rs = rows(world)
    val_folder = world.split_dir("validation")
    raw = pa.table(
        {
            "image": [(folder / r["file_name"]).read_bytes() for r in rs],
            "text": [r["text"] for r in rs],
        }
    )
    pq.write_table(raw, tmp_path / "raw.parquet")
    structs = pa.table(
        {
            "image": [{"bytes": (folder / r["file_name"]).read_bytes(), "path": None} for r in rs],
            "text": [r["text"] for r in rs],
        }
    )
    pq.write_table(structs, tmp_path / "structs.parquet")
    with open(tmp_path / "pairs.jsonl", "w") as f:
        for r in rs:
            f.write(json.dumps({"image": str(folder / r["file_name"]), "text": r["text"]}) + "\n")
    for i, (pairs, streaming) in enumerate(
        [
            ("raw.parquet", "false"),
            ("structs.parquet", "true"),
            ("pairs.jsonl", "false"),
            ("pairs.jsonl", "true"),
            (str(folder), "false"),  # an imagefolder with metadata.jsonl
        ]
    ):
        result = run(
            tmp_path / str(i),
            world,
            f"data.pairs={tmp_path / pairs}",
            f"data.val_pairs={val_folder}",
            f"data.streaming={streaming}",
        )
        assert result.steps == 2, pairs


def test_weighted_mix_of_two_tar_sets_and_a_text_corpus(shards, world, tmp_path):
    train, val = shards
    other = img2dataset_shards(world, tmp_path / "other", 2, prefix="9")
    (tmp_path / "corpus.txt").write_text("\n".join(r["text"] for r in rows(world)[1]) + "\n")
    result = run(
        tmp_path,
        world,
        f"data.pairs={train}",
        f"data.extra_pairs.other={other}/shards-{{000000..000001}}.tar",
        f"data.texts={tmp_path / 'corpus.txt'}",
        f"data.val_pairs={val}",
        "data.ratios.pairs=0.5",
        "data.ratios.other=0.3",
        "data.ratios.texts=0.2",
        "train.max_steps=6",
        recipe="flava_like",
    )
    assert result.steps == 6


def test_unknown_shards_and_ratios_name_the_key(shards, world, tmp_path):
    train, val = shards
    with pytest.raises(
        FileNotFoundError,
        match=r"data.pairs: 6 of the 10 shards .* do not exist: .*shards-000004.tar",
    ):
        run(
            tmp_path,
            world,
            f"data.pairs={train}/shards-{{000000..000009}}.tar",
            f"data.val_pairs={val}",
        )
    with pytest.raises(ConfigError, match="data.ratios: unknown source"):
        run(tmp_path, world, f"data.pairs={train}", f"data.val_pairs={val}", "data.ratios.laion=1")


def _ids(src, n=None):
    from onetower.data import build_dataset, build_image_transform

    ds = build_dataset(src, build_image_transform(32, train=False))
    samples = list(ds) if src.streaming else [ds[i] for i in range(len(ds))]
    return [s["image_id"] for s in samples[:n]]


def test_image_ids_identify_images_in_every_format(world, shards, tmp_path):
    """Parquet raw bytes used to give every row -1, so ITM never drew a negative."""
    import torch

    from onetower.data import load_pairs
    from onetower.objectives.itm_negatives import random_negatives

    folder, rs = rows(world)
    images = [(folder / r["file_name"]).read_bytes() for r in rs]
    images[1] = images[0]  # the same image twice: one id
    texts = [r["text"] for r in rs]
    pq.write_table(pa.table({"image": images, "text": texts}), tmp_path / "raw.parquet")
    structs = [{"bytes": b, "path": None} for b in images]
    pq.write_table(pa.table({"image": structs, "text": texts}), tmp_path / "structs.parquet")
    for name in ("raw.parquet", "structs.parquet"):
        ids = _ids(load_pairs(tmp_path / name, cache_dir=str(tmp_path / "cache")))
        assert -1 not in ids and ids[0] == ids[1], name
        assert len(set(ids)) == len(rs) - 1, name
        negatives = random_negatives(
            8, 0.5, torch.Generator().manual_seed(0), torch.tensor(ids[:8])
        )
        assert len(negatives) >= 3, name  # 4 asked; the one row whose image repeats may drop
    for spec in (shards[0], folder):
        ids = _ids(load_pairs(spec, cache_dir=str(tmp_path / "cache")))
        assert -1 not in ids and len(set(ids)) == len(rs)


def _broken_folder(world, out: Path, n_bad: int) -> Path:
    """An imagefolder whose first ``n_bad`` rows point at undecodable / missing files."""
    folder, rs = rows(world)
    out.mkdir(parents=True)
    with open(out / "metadata.jsonl", "w") as f:
        for i, r in enumerate(rs):
            name = f"img{i}.png"
            if i < n_bad:
                (out / name).write_bytes(b"not an image")
            else:
                (out / name).write_bytes((folder / r["file_name"]).read_bytes())
            f.write(json.dumps({"file_name": name, "text": r["text"]}) + "\n")
    return out


def test_bad_fraction_is_per_sample_seen_and_names_the_key(world, tmp_path):
    from onetower.data import SkipCounter, build_dataset, build_image_transform, load_pairs

    bad = _broken_folder(world, tmp_path / "bad", 4)  # 4 of 32 = 12.5%
    counter = SkipCounter(max_bad_fraction=1.0)
    ds = build_dataset(
        load_pairs(bad, cache_dir=str(tmp_path / "c")), build_image_transform(32, True), counter
    )
    for _ in range(3):  # three epochs: the broken rows count every epoch, as the good ones
        assert all(ds[i] is not None for i in range(len(ds)))
    assert counter.seen == 96 and counter.skipped == 12
    with pytest.raises(BadDataError) as err:
        run(
            tmp_path,
            world,
            f"data.pairs={bad}",
            f"data.val_pairs={world.split_dir('validation')}",
            "data.max_bad_fraction=0.1",
            "data.batch_size=16",  # the check starts after 100 samples: step 7
            "train.max_steps=20",
        )
    message = str(err.value)
    assert "over data.max_bad_fraction=0.1" in message and "raise data.max_bad_fraction" in message
    assert re.search(r"Examples: .*/bad/img[0-3]\.png \(undecodable", message), message


def test_all_bad_or_empty_sources_fail_before_step_1(world, tmp_path):
    bad = _broken_folder(world, tmp_path / "bad", 32)
    val = world.split_dir("validation")
    with pytest.raises(
        ConfigError,
        match=r"data.pairs=.*none of its first 32 samples is usable \(undecodable=32\), e.g. .*img0.png",
    ):
        run(tmp_path, world, f"data.pairs={bad}", f"data.val_pairs={val}")
    assert not (tmp_path / "vilt_like").exists()  # failed before the output folder was claimed
    write_tar(tmp_path / "empty.tar", [])
    with pytest.raises(ConfigError, match=r"data.pairs=.*empty.tar holds no samples"):
        run(tmp_path, world, f"data.pairs={tmp_path / 'empty.tar'}", f"data.val_pairs={val}")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(
        (ConfigError, ValueError), match="empty.jsonl is empty: it holds no samples"
    ):
        run(tmp_path, world, f"data.pairs={tmp_path / 'empty.jsonl'}", f"data.val_pairs={val}")


def test_own_tokenizer_long_text_and_non_square_images_are_said(world, tmp_path, caplog):
    """The documented tokenizer command on the user's text; captions longer than
    data.max_text_len (48 > 40: the position table follows) are cut with a warning and
    counted; 48x32 images are padded (data.resize=pad), counted."""
    import subprocess
    import sys

    from transformers import AutoConfig

    from onetower.data import build_image_transform, to_square

    folder, rs = rows(world)
    out = tmp_path / "pairs"
    out.mkdir()
    with open(out / "metadata.jsonl", "w") as f:
        for i, r in enumerate(rs):
            (out / f"{i}.png").write_bytes(encoded(folder / r["file_name"], "PNG", (48, 32)))
            text = (r["text"] + " and ") * (12 if i % 2 else 1) + "the end"
            f.write(json.dumps({"file_name": f"{i}.png", "text": text}) + "\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "onetower.data.tokenizer",
            str(tmp_path / "tok"),
            "--texts",
            str(out / "metadata.jsonl"),
            "--vocab-size",
            "200",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "use data.tokenizer=" in done.stdout and (tmp_path / "tok" / "tokenizer.json").is_file()
    with caplog.at_level("WARNING"):
        result = run(
            tmp_path,
            world,
            f"data.pairs={out}",
            f"data.val_pairs={out}",
            f"data.tokenizer={tmp_path / 'tok'}",
            "data.max_text_len=48",
            "data.resize=pad",
        )
    assert "longer than data.max_text_len=48" in caplog.text
    assert "not square: data.resize=pad" in caplog.text
    assert "text_truncated=" in result.summary and "non_square=" in result.summary
    assert AutoConfig.from_pretrained(result.final_model).max_text_len == 48
    # pad keeps the whole 48x32 image: the padded rows are the fill colour
    img = Image.new("RGB", (48, 32), (255, 0, 0))
    square = to_square(img, "pad", (0.5, 0.5, 0.5))
    assert square.size == (48, 48) and square.getpixel((0, 0)) == (128, 128, 128)
    assert square.getpixel((0, 8)) == (255, 0, 0)
    assert to_square(img, "squash").size == (48, 48) and to_square(img, "crop") is img
    assert build_image_transform(32, False)(square).shape == (3, 32, 32)


def test_stream_resume_mid_epoch_is_bit_identical(shards, world, tmp_path, caplog):
    """Tar shards, 2 workers, a shuffle buffer, text batches mixed in: stopped mid-epoch and
    resumed from the workers' cursors, the run ends with the uninterrupted run's weights."""
    import torch
    from safetensors.torch import load_file

    train, val = shards
    common = (
        f"data.pairs={train}",
        f"data.val_pairs={val}",
        "data.num_workers=2",
        "data.shuffle_buffer=8",
        "data.ratios.texts=0.3",
        "train.max_steps=11",
        "train.save_every=0",
    )
    straight = run(tmp_path / "a", world, *common)
    stopped = run(tmp_path / "b", world, *common, "train.stop_at=7")
    assert stopped.steps == 7
    ckpt = stopped.output_dir / "checkpoints" / "step_7" / "custom_checkpoint_1.pkl"
    pairs = torch.load(ckpt, weights_only=False)["per_rank"][0]["pairs"]
    assert pairs["taken"] % 4 and pairs["cursor"]  # mid-epoch: worker cursors saved
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    resumed = run(tmp_path / "b", world, *common, "run.resume=latest")
    assert resumed.steps == 11
    a = load_file(straight.final_model / "model.safetensors")
    b = load_file(resumed.final_model / "model.safetensors")
    assert not [k for k in a if not torch.equal(a[k], b[k])]
    assert straight.history["loss"] == resumed.history["loss"]
    # other worker counts deal the shards out otherwise: said, and the epoch restarts
    with caplog.at_level("WARNING"):
        other = run(tmp_path / "c", world, *common, "run.resume=latest", "data.num_workers=1")
    assert other.steps == 11 and "1 process(es) x 2 worker(s) and resumes with 1 x 1" in caplog.text


@pytest.mark.slow
def test_two_processes_two_workers_sigkill_and_resume_bit_identical(world, tmp_path):
    """2 processes (gloo) x 2 workers on tar shards with a shuffle buffer: SIGKILLed after a
    mid-epoch checkpoint and resumed, the final weights equal the uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch
    from safetensors.torch import load_file

    from onetower.training import list_checkpoints

    from ..conftest import CONFIGS, RECIPES

    train = img2dataset_shards(world, tmp_path / "train", 8)  # 4 rows a shard
    val = img2dataset_shards(world, tmp_path / "val", 1, "validation")
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }

    def command(out: Path, *extra: str) -> list[str]:
        launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1"]
        launch += ["--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no"]
        recipe = [
            str(RECIPES / "vilt_like.py"),
            "--config",
            str(CONFIGS / "debug" / "vilt_like.yaml"),
        ]
        args = [
            f"run.output_dir={out}",
            f"data.pairs={train}/shards-{{000000..000007}}.tar",
            f"data.val_pairs={val}",
            f"data.tokenizer={world.tokenizer_dir}",
            "data.num_workers=2",
            "data.batch_size=4",  # per worker 2 shards = 8 rows = 2 batches; 4 a rank an epoch
            "data.shuffle_buffer=8",
            "train.max_steps=10",
            "train.save_every=3",
            "train.log_every=1",
            *FAST[2:],
            *extra,
        ]
        return [sys.executable, *launch, *recipe, *args]

    straight = tmp_path / "straight"
    with open(tmp_path / "straight.log", "w") as f:
        done = subprocess.run(
            command(straight), env=env, stdout=f, stderr=subprocess.STDOUT, timeout=600
        )
    assert done.returncode == 0, (tmp_path / "straight.log").read_text()[-3000:]

    out, log = tmp_path / "killed", tmp_path / "killed.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            command(out), env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "checkpoints" / "step_6").is_dir():  # written atomically (renamed in)
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    assert [c.name for c in list_checkpoints(out)][-1] == "step_6", log.read_text()[-3000:]
    assert not (out / "final").exists()
    state = torch.load(
        out / "checkpoints" / "step_6" / "custom_checkpoint_1.pkl", weights_only=False
    )
    assert len(state["per_rank"]) == 2 and all(p["pairs"]["cursor"] for p in state["per_rank"])
    with open(log, "a") as f:
        resumed = subprocess.run(
            command(out, "run.resume=latest"),
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    assert resumed.returncode == 0, log.read_text()[-3000:]
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(out / "final" / "model.safetensors")
    assert not [k for k in a if not torch.equal(a[k], b[k])]
