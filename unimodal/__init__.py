"""Per-modality embedders (text, image) and optional unimodal towers."""

from onetower.unimodal.image import ImageEmbedder, patchify, unpatchify
from onetower.unimodal.positions import sincos_1d, sincos_2d
from onetower.unimodal.text import TextEmbedder
from onetower.unimodal.towers import UnimodalTower

__all__ = [
    "ImageEmbedder",
    "TextEmbedder",
    "UnimodalTower",
    "patchify",
    "sincos_1d",
    "sincos_2d",
    "unpatchify",
]
