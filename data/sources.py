"""Data sources built on ``datasets``: paired, text-only and image-only, in memory or streamed.

A ``Source`` wraps a ``datasets.Dataset`` / ``IterableDataset`` whose image column stays
*undecoded* (paths, bytes or ``{"bytes", "path"}``): decoding happens later, per sample, under
the bad-sample policy of ``onetower.data.robust``.
"""

from __future__ import annotations

import copy
import hashlib
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import datasets
from datasets.distributed import split_dataset_by_node

Kind = Literal["pairs", "text", "image"]
HFData = datasets.Dataset | datasets.IterableDataset
_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".txt": "text",
}
METADATA_NAMES = ("metadata.jsonl", "metadata.parquet", "metadata.csv")


@dataclass(frozen=True)
class Source:
    """A dataset plus how to read a row.

    Attributes:
        dataset: rows of the source, images undecoded.
        kind: "pairs" (image + text), "text" or "image".
        image_column / text_column: the columns to read (None when the kind has none).
        base_dir: folder that relative image paths are resolved against.
        key_column: column giving a stable per-image key (file path, tar key, or id).
        extra_columns: columns copied unchanged into each sample (task fields such as VQA
            question ids and answer targets).
    """

    dataset: HFData
    kind: Kind
    image_column: str | None = "image"
    text_column: str | None = "text"
    base_dir: Path | None = None
    key_column: str | None = None
    extra_columns: tuple[str, ...] = ()

    @property
    def streaming(self) -> bool:
        """Rows are streamed (no ``len``, no random access)."""
        return not isinstance(self.dataset, datasets.Dataset)

    def shard(self, rank: int, world_size: int) -> Source:
        """This process's part of a stream: tar shards are dealt out by shard, datasets'
        streams by ``split_dataset_by_node``. Don't also let accelerate shard it (the dataset
        says ``split_by_process``; ``onetower.training.state.prepare_loader`` reads it)."""
        from onetower.data.webdataset import ShardStream

        if isinstance(self.dataset, ShardStream):
            ds = copy.copy(self.dataset)
            ds.rank, ds.world_size, ds.split_by_process = rank, world_size, world_size > 1
            return replace(self, dataset=ds)
        ds = split_dataset_by_node(self.dataset, rank, world_size)
        ds.split_by_process = world_size > 1
        return replace(self, dataset=ds)

    def to_streaming(self, num_shards: int = 1) -> Source:
        """An ``IterableDataset`` view of an in-memory source (``num_shards`` >= workers)."""
        if self.streaming:
            return self
        return replace(self, dataset=self.dataset.to_iterable_dataset(num_shards=num_shards))

    def image_key(self, row: dict[str, Any]) -> int:
        """A stable integer id for the row's image (``image_ids`` in the batch).

        Numeric file stems ("000123.png", tar key "000123") give that number, so the same
        image has the same id in every format; other keys and paths are hashed; an image given
        only as bytes (Parquet / JSONL ``image`` bytes, ``{bytes, path: None}``) gets a hash of
        its bytes, so identical images share an id and different ones (almost surely) differ.
        -1 only when the row has no image at all.
        """
        raw = row.get(self.key_column) if self.key_column else None
        if raw is None and self.image_column is not None:
            raw = row.get(self.image_column)
            if isinstance(raw, dict):
                raw = raw.get("path") or raw.get("bytes")
        if isinstance(raw, bytes | bytearray | memoryview) and len(raw):
            return bytes_id(bytes(raw))
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str | Path) and str(raw):
            stem = Path(str(raw)).stem.split(".")[0]
            return int(stem) if stem.isdigit() else zlib.crc32(str(raw).encode())
        return -1


def bytes_id(data: bytes) -> int:
    """A stable non-negative 62-bit id of an image's bytes (blake2b)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 2


def _undecoded(ds: HFData) -> HFData:
    """Turn every ``Image`` feature off decoding (we decode under try/except)."""
    for name, feature in (ds.features or {}).items():
        if isinstance(feature, datasets.Image) and feature.decode:
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return ds


def _load_table(files: list[Path], split: str, streaming: bool, cache_dir: str | None) -> HFData:
    if all(f.is_file() and f.stat().st_size == 0 for f in files):
        raise ValueError(f"{files[0]} is empty: it holds no samples")
    builder = _BUILDERS.get(files[0].suffix)
    if builder is None:
        raise ValueError(f"unsupported file type {files[0].suffix!r} ({files[0]})")
    kwargs: dict[str, Any] = {}
    if builder == "json":
        # With a non-"utf-8" codec name the json builder decodes with `encoding_errors`, so one
        # invalid byte becomes U+FFFD (skipped later) instead of failing the whole file.
        kwargs = {"encoding": "utf-8-sig", "encoding_errors": "replace"}
    return datasets.load_dataset(
        builder,
        data_files={split: [str(f) for f in files]},
        split=split,
        streaming=streaming,
        cache_dir=cache_dir,
        **kwargs,
    )


def _metadata_file(path: Path, split: str) -> Path | None:
    for folder in (path / split, path):
        for name in METADATA_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def load_pairs(
    path: str | Path | list[str],
    split: str = "train",
    streaming: bool = False,
    image_column: str | None = None,
    text_column: str = "text",
    cache_dir: str | None = None,
    shuffle_buffer: int = 0,
    seed: int = 0,
    resampled: bool = False,
) -> Source:
    """Image-text pairs from an imagefolder with captions, JSONL/Parquet/CSV, or tar shards.

    Args:
        path: an imagefolder (``path[/split]/metadata.{jsonl,parquet,csv}`` with
            ``file_name`` and ``text``), a table file of (image path or bytes, caption), or
            WebDataset tar shards as ``onetower.data.webdataset.expand_shards`` reads them (a
            ``.tar``, a folder of them, a brace list, a glob, a URL, or a comma list).
        split: split name (imagefolder sub-folder; label for single files).
        streaming: stream rows instead of preparing an Arrow cache (tar shards always stream).
        image_column: image column; default ``file_name`` for imagefolders, else ``image``.
        text_column: caption column.
        cache_dir: datasets cache (``None`` = the HF default).
        shuffle_buffer, seed, resampled: tar shards only (``ShardStream``).
    """
    from onetower.data.webdataset import is_shard_spec, load_webdataset

    if is_shard_spec(path):
        return load_webdataset(path, shuffle_buffer, seed, resampled)
    path = Path(path)
    meta = _metadata_file(path, split) if path.is_dir() else None
    files = [meta] if meta is not None else [path]
    # Imagefolder metadata is read with the table builders rather than `imagefolder` so a
    # missing file or a bad byte in one row is skipped later instead of failing the load.
    ds = _undecoded(_load_table(files, split, streaming, cache_dir))
    image_column = image_column or ("file_name" if meta is not None else "image")
    return Source(ds, "pairs", image_column, text_column, base_dir=files[0].parent)


def load_texts(
    path: str | Path,
    split: str = "train",
    streaming: bool = False,
    text_column: str = "text",
    cache_dir: str | None = None,
) -> Source:
    """Text-only rows from ``.txt`` (one per line), JSONL, CSV or Parquet files."""
    files = sorted(Path(path).glob("*.*")) if Path(path).is_dir() else [Path(path)]
    ds = _load_table(files, split, streaming, cache_dir)
    return Source(ds, "text", None, text_column)


def load_images(
    path: str | Path, split: str = "train", streaming: bool = False, cache_dir: str | None = None
) -> Source:
    """Image-only rows from a folder of images (``datasets``' imagefolder, labels dropped)."""
    ds = datasets.load_dataset(
        "imagefolder",
        data_dir=str(path),
        split=split,
        streaming=streaming,
        drop_labels=True,
        drop_metadata=True,
        cache_dir=cache_dir,
    )
    return Source(_undecoded(ds), "image", "image", None)


def interleave(sources: list[Source], ratios: list[float], seed: int) -> Source:
    """Mix same-kind sources row by row with sampling ``ratios`` (``interleave_datasets``).

    Mixing *kinds* (text-only with pairs) happens per step: see ``onetower.training.state.Stream``.
    """
    kinds = {s.kind for s in sources}
    if len(kinds) != 1:
        raise ValueError(f"interleave needs sources of one kind, got {sorted(kinds)}")
    if len({s.base_dir for s in sources}) != 1:
        raise ValueError("interleaved sources must share base_dir (or use absolute paths)")
    total = sum(ratios)
    mixed = datasets.interleave_datasets(
        [s.dataset for s in sources],
        probabilities=[r / total for r in ratios],
        seed=seed,
        stopping_strategy="all_exhausted",
    )
    return replace(sources[0], dataset=mixed)
