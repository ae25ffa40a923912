"""``OneTowerProcessor``: the tokenizer and the eval image transform, saved with a model.

``processor(images=..., text=..., return_tensors="pt")`` gives exactly the tensors a onetower
model was evaluated on during training: pixels through the project's own timm eval transform
(:func:`onetower.data.build_image_transform`), text through the run's tokenizer truncated at
the model's ``max_text_len``. Importing ``onetower`` registers both classes with
``AutoImageProcessor`` / ``AutoProcessor``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, BatchFeature, PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin

from onetower.configuration import OneTowerConfig
from onetower.data.robust import decode_image
from onetower.data.transforms import DEFAULT_MEAN, DEFAULT_STD, build_image_transform

#: Files a saved processor must hold (the tokenizer files are checked separately).
PROCESSOR_FILE = "processor_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

ImageLike = Image.Image | np.ndarray


class OneTowerImageProcessor(BaseImageProcessor):
    """PIL image(s) -> ``pixel_values`` `(B, 3, H, W)` via the training eval transform.

    The transformers backends (PIL / torchvision) resize and crop slightly differently from
    timm, so instead of re-deriving the pipeline from flags this runs the very transform the
    training loop evaluates with; only its parameters are saved.

    Args:
        image_size: side of the square crop, the model's ``image_size``.
        image_mean: per-channel normalisation mean.
        image_std: per-channel normalisation std.
        crop_pct: resize the short side to ``image_size / crop_pct`` before the centre crop.
        interpolation: timm interpolation name.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        image_size: int = 224,
        image_mean: Sequence[float] = DEFAULT_MEAN,
        image_std: Sequence[float] = DEFAULT_STD,
        crop_pct: float = 1.0,
        interpolation: str = "bicubic",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("image_processor_type", None)  # written by to_dict, not an init argument
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.image_mean = [float(m) for m in image_mean]
        self.image_std = [float(s) for s in image_std]
        self.crop_pct = float(crop_pct)
        self.interpolation = interpolation

    def transform(self) -> Any:
        """The timm eval transform: RGB PIL image -> float `(3, H, W)`."""
        return build_image_transform(
            self.image_size,
            train=False,
            mean=tuple(self.image_mean),
            std=tuple(self.image_std),
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
        )

    def preprocess(  # type: ignore[override]
        self, images: ImageLike | Sequence[ImageLike], return_tensors: str | None = "pt", **_: Any
    ) -> BatchFeature:
        """Convert each image to RGB as the training data pipeline does, then transform it.

        Args:
            images: one PIL image / uint8 array `(H, W[, C])`, a list of them, or a list of
                equal-length groups (several images per sample, e.g. NLVR2 pairs).
            return_tensors: ``"pt"`` (or None) for a torch tensor, ``"np"`` for numpy.

        Returns:
            ``BatchFeature`` with ``pixel_values`` `(B, 3, H, W)`, or `(B, I, 3, H, W)` for
            groups of I images.
        """
        items = [images] if isinstance(images, ImageLike) else list(images)
        if not items:
            raise ValueError("no images given")
        if all(isinstance(group, list | tuple) for group in items):
            if len({len(group) for group in items}) != 1:
                raise ValueError("every sample must have the same number of images")
            pixels = torch.stack([self.preprocess(list(g))["pixel_values"] for g in items])
        else:
            transform = self.transform()
            pixels = torch.stack([transform(decode_image(_to_pil(img))) for img in items])
        if return_tensors == "np":
            return BatchFeature({"pixel_values": pixels.numpy()})
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        return BatchFeature({"pixel_values": pixels})


def _to_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim in (2, 3):
        return Image.fromarray(image)
    raise TypeError(
        f"images must be PIL images or uint8 arrays (H, W[, C]), got {type(image).__name__}"
        + (f" of dtype {image.dtype}" if isinstance(image, np.ndarray) else "")
    )


class OneTowerProcessor(ProcessorMixin):
    """Tokenizer + image processor for onetower models.

    Args:
        image_processor: a :class:`OneTowerImageProcessor`.
        tokenizer: a fast tokenizer (the run's ``final/`` tokenizer).
        max_text_len: texts are truncated to this many tokens (the model's ``max_text_len``).
    """

    def __init__(
        self,
        image_processor: OneTowerImageProcessor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        max_text_len: int = 40,
        **kwargs: Any,
    ) -> None:
        self.max_text_len = int(max_text_len)
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_config(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        image_size: int,
        max_text_len: int,
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
    ) -> OneTowerProcessor:
        """A processor matching a run's data config (``data.image_size``, ``data.mean``, ...)."""
        image_processor = OneTowerImageProcessor(image_size, image_mean=mean, image_std=std)
        return cls(image_processor, tokenizer, max_text_len=max_text_len)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):  # type: ignore[override]
        """``ProcessorMixin.from_pretrained``; a local folder missing the processor or
        tokenizer files is a ``FileNotFoundError`` naming the folder and the missing files."""
        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir():
            missing = missing_processor_files(folder)
            if missing:
                raise FileNotFoundError(
                    f"{folder} holds no complete onetower processor: missing {', '.join(missing)} "
                    "(write one with OneTowerProcessor.save_pretrained)"
                )
        elif os.path.exists(folder):
            raise NotADirectoryError(f"{folder} is a file; a processor is loaded from a folder")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def __call__(  # type: ignore[override]
        self,
        images: ImageLike | Sequence[ImageLike] | None = None,
        text: str | Sequence[str] | None = None,
        return_tensors: str | None = "pt",
        padding: bool | str = "longest",
        truncation: bool = True,
        max_length: int | None = None,
        **text_kwargs: Any,
    ) -> BatchFeature:
        """Encode images and/or texts.

        Args:
            images: PIL image(s) (any mode; converted to RGB as in training).
            text: a string or a list of strings, one per image when both are given.
            return_tensors: ``"pt"`` or ``"np"``.
            padding: tokenizer padding (default: to the longest text in the batch).
            truncation: truncate texts to ``max_length``.
            max_length: defaults to ``self.max_text_len``.
            **text_kwargs: passed to the tokenizer.

        Returns:
            ``BatchFeature`` with ``input_ids`` / ``attention_mask`` `(B, T)` when text is given
            and ``pixel_values`` `(B, 3, H, W)` when images are given.
        """
        if images is None and text is None:
            raise ValueError("give images=..., text=... or both")
        out: dict[str, Any] = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if not all(isinstance(t, str) for t in texts):
                raise TypeError("text must be a string or a list of strings")
            # the model takes no token_type_ids (segments are per modality, not per sentence)
            text_kwargs.setdefault("return_token_type_ids", False)
            out.update(
                self.tokenizer(
                    texts,
                    padding=padding,
                    truncation=truncation,
                    max_length=max_length or self.max_text_len,
                    return_tensors=return_tensors,
                    **text_kwargs,
                )
            )
        if images is not None:
            pixels = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
            if text is not None and len(pixels) != len(out["input_ids"]):
                raise ValueError(
                    f"got {len(out['input_ids'])} texts and {len(pixels)} images; pass one text "
                    "per image"
                )
            out["pixel_values"] = pixels
        return BatchFeature(out)

    @property
    def model_input_names(self) -> list[str]:
        """Keys the model's ``forward`` accepts, in output order."""
        return ["input_ids", "attention_mask", "pixel_values"]


def missing_processor_files(folder: str | os.PathLike) -> list[str]:
    """Names of the files a saved :class:`OneTowerProcessor` needs that ``folder`` lacks."""
    folder = Path(folder)
    missing = [] if (folder / PROCESSOR_FILE).is_file() else [PROCESSOR_FILE]
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    return missing


AutoImageProcessor.register(
    OneTowerConfig, image_processor_classes={"torchvision": OneTowerImageProcessor}, exist_ok=True
)
AutoProcessor.register(OneTowerConfig, OneTowerProcessor, exist_ok=True)
