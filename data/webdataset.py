"""WebDataset tar shards: write them from an imagefolder, stream them as a ``Source``.

Reading uses ``IterableDataset.from_generator`` over the shards instead of datasets'
``webdataset`` builder: that builder decodes ``.txt`` members strictly, so one caption with
an invalid UTF-8 byte raises inside the stream and loses the rest of the shard (verified
with datasets 5.2). Here members stay bytes and are checked per sample; a truncated shard
ends that shard only.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path

import datasets

from onetower.data.sources import Source

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")
FEATURES = datasets.Features(
    {
        "__key__": datasets.Value("string"),
        "image": datasets.Value("binary"),
        "text": datasets.Value("binary"),
    }
)


def write_webdataset_shards(
    imagefolder_split: str | Path, out_dir: str | Path, shard_size: int = 100
) -> list[Path]:
    """Write an imagefolder split (``metadata.jsonl`` + images) as ``shard-NNNNN.tar`` files.

    Each sample is ``<stem>.<ext>`` (image bytes) + ``<stem>.txt`` (caption), in metadata order.

    Returns:
        The shard paths, in order.
    """
    folder, out = Path(imagefolder_split), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    shards = []
    for start in range(0, len(rows), shard_size):
        path = out / f"shard-{start // shard_size:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for row in rows[start : start + shard_size]:
                name = Path(row["file_name"])
                members = (
                    (name.name, (folder / name).read_bytes()),
                    (f"{name.stem}.txt", row["text"].encode()),
                )
                for member, data in members:
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards.append(path)
    return shards


def _samples(shards: list[str]) -> Iterator[dict]:
    for shard in shards:
        key, sample = None, {}
        try:
            with tarfile.open(shard, "r|*") as tar:  # stream mode: one pass, no index
                for member in tar:
                    if not member.isfile():
                        continue
                    stem, _, ext = Path(member.name).name.partition(".")
                    if stem != key and key is not None:
                        yield sample
                        sample = {}
                    key = stem
                    sample["__key__"] = stem
                    data = tar.extractfile(member).read()
                    if ext.lower() in IMAGE_EXTENSIONS:
                        sample["image"] = data
                    elif ext.lower() == "txt":
                        sample["text"] = data
        except (tarfile.TarError, OSError, EOFError) as e:
            # A truncated shard loses only its tail; the partial last sample is dropped.
            logger.warning("stopped reading %s: %s", shard, e)
            sample = {}
        if sample:
            yield sample


def _normalised(shards: list[str]) -> Iterator[dict]:
    for sample in _samples(shards):
        yield {
            "__key__": sample["__key__"],
            "image": sample.get("image"),
            "text": sample.get("text"),
        }


def load_webdataset(path: str | Path) -> Source:
    """Stream image-text pairs from ``.tar`` shards (a file, or every ``*.tar`` in a folder).

    The dataset has one shard per tar file, so DataLoader workers and
    ``Source.shard`` split by file when the counts divide.
    """
    path = Path(path)
    shards = sorted(str(p) for p in path.glob("*.tar")) if path.is_dir() else [str(path)]
    if not shards:
        raise FileNotFoundError(f"no .tar shards in {path}")
    ds = datasets.IterableDataset.from_generator(
        _normalised, gen_kwargs={"shards": shards}, features=FEATURES
    )
    return Source(ds, "pairs", "image", "text", key_column="__key__")
