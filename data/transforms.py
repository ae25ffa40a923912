"""Image transforms from timm, applied with a per-sample seed so augmentation is reproducible."""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from timm.data import create_transform

#: ViLT / BEiT-3 style normalisation to [-1, 1]; pass ImageNet statistics for timm backbones.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


def build_image_transform(
    image_size: int,
    train: bool,
    mean: tuple[float, ...] = DEFAULT_MEAN,
    std: tuple[float, ...] = DEFAULT_STD,
    scale: tuple[float, float] = (0.8, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.0,
    color_jitter: float | None = None,
    crop_pct: float = 1.0,
    interpolation: str = "bicubic",
) -> Callable[[Image.Image], torch.Tensor]:
    """A timm transform: PIL RGB image -> float `(3, H, W)` normalised tensor.

    Train: RandomResizedCrop(``scale``, ``ratio``) [+ flip] [+ colour jitter]; eval: resize to
    ``image_size / crop_pct`` then centre crop. The defaults differ from timm's on purpose:
    ``hflip=0`` because captions say "left of", no colour jitter because captions name colours,
    a mild crop scale so objects named in the caption stay in view, and ``crop_pct=1`` so
    eval sees the whole image.
    """
    return create_transform(
        input_size=image_size,
        is_training=train,
        scale=scale,
        ratio=ratio,
        hflip=hflip,
        color_jitter=color_jitter or 0.0,
        interpolation=interpolation,
        mean=mean,
        std=std,
        crop_pct=crop_pct,
    )


#: ``data.resize``: what happens to a non-square image before the (square) transform.
RESIZE_MODES = ("crop", "pad", "squash")


def to_square(image: Image.Image, mode: str, fill: tuple[float, ...] = DEFAULT_MEAN) -> Image.Image:
    """A non-square image made square as ``mode`` says (a square one is returned as is).

    - ``crop`` (default): unchanged here; the transform's crop takes a square part (train: a
      random resized crop; eval: the centre), so the sides of a wide image are lost;
    - ``pad``: centred on a square canvas of the ``fill`` colour (the normalisation mean, in
      [0, 1], so padding reads as zero): nothing lost, some pixels wasted;
    - ``squash``: resized to a square, the aspect ratio changed.
    """
    w, h = image.size
    if w == h or mode == "crop":
        return image
    if mode == "squash":
        side = max(w, h)
        return image.resize((side, side), Image.BICUBIC)
    if mode == "pad":
        side = max(w, h)
        colour = tuple(int(round(255 * c)) for c in fill)
        canvas = Image.new("RGB", (side, side), colour)
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        return canvas
    raise ValueError(f"resize mode {mode!r}: one of {RESIZE_MODES}")


def sample_seed(seed: int, epoch: int, key: str | int) -> int:
    """A 63-bit seed for one sample's augmentation, stable across processes and sources."""
    return zlib.crc32(f"{seed}/{epoch}/{key}".encode()) | (zlib.adler32(str(key).encode()) << 32)


@dataclass
class SeededTransform:
    """Runs a transform with python/torch global RNGs seeded per sample, then restores them.

    timm's RandomResizedCrop draws from the global ``random`` module and torchvision's flip /
    jitter from torch's global RNG, neither of which takes a generator. Seeding both from
    (seed, epoch, sample key) makes a sample's augmentation identical whichever source,
    worker count or order delivers it, and leaves the caller's RNG state untouched.
    """

    transform: Callable[[Image.Image], torch.Tensor]
    seed: int = 0
    epoch: int = 0

    def __call__(self, image: Image.Image, key: str | int) -> torch.Tensor:
        s = sample_seed(self.seed, self.epoch, key)
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            random.seed(s)
            # the CPU generator only: torch.manual_seed would also queue a lazy CUDA seeding
            # (with a stack capture) on CUDA builds, which cost ~1.5 ms per sample
            torch.random.default_generator.manual_seed(s)
            try:
                return self.transform(image)
            finally:
                random.setstate(state)
