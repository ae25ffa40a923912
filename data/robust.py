"""Bad-sample policy: decode images and captions defensively, skip and count what is unusable.

datasets 5.2 has no option to skip broken images, so sources keep images undecoded
(``Image(decode=False)`` or raw paths/bytes) and ``decode_image`` opens them here.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

#: Why a sample was skipped; the counter keeps one column per reason.
REASONS = (
    "missing_file",
    "empty_file",
    "undecodable",
    "truncated",
    "too_large",
    "empty_text",
    "invalid_utf8",
    "bad_record",
)
#: DataLoader workers each get their own counter row, so no locking is needed.
MAX_WORKERS = 64
_WS = re.compile(r"\s+")
# U+FFFD is what a lenient decoder leaves for bad bytes; lone surrogates come from surrogateescape.
_BAD_UTF8 = re.compile("[\ud800-\udfff\ufffd]")


class SkipSample(Exception):
    """Raised by decoders for an unusable sample; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class BadDataError(RuntimeError):
    """Too large a fraction of the data is unusable."""


#: Things done to usable samples that the user should know about (counted, not skipped).
NOTES = ("text_truncated", "non_square")


class SkipCounter:
    """Counts seen and skipped samples by reason, across DataLoader worker processes.

    Every sample *seen* is counted, each time it is seen: a broken row read every epoch counts
    every epoch, as its good neighbours do, so the fraction is the fraction of what training
    actually met. The counts live in a shared-memory tensor, one row per worker (row 0 = main
    process), so counts made inside workers are visible to the training loop.

    Args:
        max_bad_fraction: raise ``BadDataError`` once skipped / seen exceeds this ...
        min_samples: ... after at least this many samples were seen.
        key: the config key named in the error.
    """

    def __init__(
        self,
        max_bad_fraction: float = 0.05,
        min_samples: int = 100,
        key: str = "data.max_bad_fraction",
    ) -> None:
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self.key = key
        # Column 0 counts every sample seen, then the skip reasons, then the notes.
        self._counts = torch.zeros(
            MAX_WORKERS + 1, 1 + len(REASONS) + len(NOTES), dtype=torch.int64
        )
        self._counts.share_memory_()
        #: up to 5 examples of skipped samples seen by this process: "where (reason: detail)"
        self.examples: list[str] = []

    def _row(self) -> torch.Tensor:
        info = torch.utils.data.get_worker_info()
        return self._counts[0 if info is None else 1 + info.id % MAX_WORKERS]

    def ok(self) -> None:
        """Record a good sample."""
        self._row()[0] += 1

    def note(self, what: str, n: int = 1) -> None:
        """Count ``n`` usable samples that were changed (one of ``NOTES``)."""
        self._row()[1 + len(REASONS) + NOTES.index(what)] += n

    def noted(self, what: str) -> int:
        return int(self._counts[:, 1 + len(REASONS) + NOTES.index(what)].sum())

    def skip(self, reason: str, where: str = "") -> None:
        """Record a skipped sample (``where``: its file / shard and key, for the error);
        raises ``BadDataError`` if too many were bad."""
        row = self._row()
        row[0] += 1
        row[1 + REASONS.index(reason)] += 1
        if where and len(self.examples) < 5:
            self.examples.append(where)
        self.check()

    @property
    def seen(self) -> int:
        return int(self._counts[:, 0].sum())

    @property
    def skipped(self) -> int:
        return int(self._counts[:, 1 : 1 + len(REASONS)].sum())

    def counts(self) -> dict[str, int]:
        """Skips per reason (reasons with zero skips left out)."""
        totals = self._counts[:, 1 : 1 + len(REASONS)].sum(0).tolist()
        return {r: n for r, n in zip(REASONS, totals, strict=True) if n}

    def summary(self) -> str:
        """One line for the end of a run, e.g. ``skipped 3 of 120 samples (2.5%): ...``."""
        seen, skipped = self.seen, self.skipped
        pct = 100 * skipped / max(seen, 1)
        detail = ", ".join(f"{r}={n}" for r, n in self.counts().items()) or "none"
        notes = "".join(f", {w}={n}" for w, n in self.notes().items())
        return f"skipped {skipped} of {seen} samples seen ({pct:.1f}%): {detail}{notes}"

    def notes(self) -> dict[str, int]:
        """Counts of usable samples that were changed (``NOTES``; zeros left out)."""
        return {w: self.noted(w) for w in NOTES if self.noted(w)}

    def check(self) -> None:
        """Raise ``BadDataError`` if the bad fraction is over the limit."""
        seen = self.seen
        if seen >= self.min_samples and self.skipped > self.max_bad_fraction * seen:
            examples = "; ".join(self.examples) or "none recorded in this process"
            raise BadDataError(
                f"too much bad data: {self.summary()}, over {self.key}={self.max_bad_fraction:g}"
                f" ({self.max_bad_fraction:.1%}). Examples: {examples}. Fix or remove those "
                f"files, or raise {self.key}."
            )

    def reset(self) -> None:
        self._counts.zero_()
        self.examples = []


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decodable mode to 8-bit RGB, scaling high bit depths instead of clipping."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        # 16-bit data spans 0..65535; a plain convert("L") would clip it to white.
        scale = 257.0 if arr.max() > 255 else 1.0
        img = Image.fromarray(np.clip(arr / scale, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        # Transparent pixels become white, not whatever colour the encoder left there.
        img = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img.alpha_composite(rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def _open_bytes(raw: Any, base_dir: str | Path | None) -> bytes:
    if isinstance(raw, dict):
        if raw.get("bytes"):
            return raw["bytes"]
        raw = raw.get("path")
    if isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
    elif isinstance(raw, str | Path) and str(raw):
        path = Path(raw)
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise SkipSample("missing_file", str(path)) from e
    else:
        raise SkipSample("missing_file", f"no image in {type(raw).__name__}")
    if not data:
        raise SkipSample("empty_file", str(raw)[:200])
    return data


def decode_image(raw: Any, base_dir: str | Path | None = None, max_side: int = 4096) -> Image.Image:
    """Decode ``raw`` (PIL image, bytes, path, or datasets' ``{"bytes", "path"}``) to RGB.

    Odd but decodable images (CMYK, 16-bit, palette, alpha, grayscale, tiny) are converted;
    images longer than ``max_side`` are downscaled keeping their aspect ratio.

    Raises:
        SkipSample: the image is missing, empty, undecodable, truncated or too large.
    """
    if isinstance(raw, Image.Image):
        img = raw
    else:
        data = _open_bytes(raw, base_dir)
        try:
            img = Image.open(io.BytesIO(data))
            img.draft("RGB", (max_side, max_side))  # JPEG only: decode at reduced size
            img.load()
        except Image.DecompressionBombError as e:
            raise SkipSample("too_large", str(e)) from e
        except UnidentifiedImageError as e:
            raise SkipSample("undecodable", str(e)) from e
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            reason = "truncated" if "truncated" in str(e).lower() else "undecodable"
            raise SkipSample(reason, str(e)) from e
    try:
        img = ImageOps.exif_transpose(img)
        if max(img.size) > max_side:
            img.thumbnail((max_side, max_side))
        return _to_rgb(img)
    except (OSError, ValueError) as e:
        raise SkipSample("undecodable", str(e)) from e


def clean_text(raw: Any, max_chars: int = 2000) -> str:
    """Normalise whitespace and check a caption; cut absurdly long ones before tokenising.

    Raises:
        SkipSample: empty / whitespace-only, or not valid UTF-8 (including U+FFFD left by a
            lenient decoder and lone surrogates).
    """
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise SkipSample("invalid_utf8", str(e)) from e
    if not isinstance(raw, str):
        raise SkipSample("empty_text", f"caption is {type(raw).__name__}")
    if _BAD_UTF8.search(raw):
        raise SkipSample("invalid_utf8", repr(raw[:80]))
    text = _WS.sub(" ", raw[: max_chars * 2]).strip()[:max_chars]
    if not text:
        raise SkipSample("empty_text", repr(raw[:80]))
    return text


def check_images(
    rows: Any, base_dir: str | Path, image_columns: Sequence[str], id_column: str
) -> None:
    """Fail early, naming the rows, when image files referenced by ``rows`` (a
    ``datasets.Dataset``) are missing.

    A VQA / NLVR2 split whose images were not all downloaded would otherwise train on a
    silently smaller set (or, at evaluation, score fewer questions than the split has).

    Raises:
        FileNotFoundError: lists up to five missing files with the ids of their rows.
    """
    base, ids = Path(base_dir), rows[id_column]
    missing: list[str] = []
    n = 0
    for column in image_columns:
        for path, ident in zip(rows[column], ids, strict=True):
            if not (base / path).is_file():
                n += 1
                if len(missing) < 5:
                    missing.append(f"{id_column} {ident}: {base / path}")
    if n:
        raise FileNotFoundError(
            f"{n} image file(s) referenced by the annotations are missing, e.g. "
            + "; ".join(missing)
        )
