"""OneTowerProcessor: the training eval transform, tokenizer settings, save/load, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor

from onetower import OneTowerConfig, OneTowerModel, OneTowerProcessor
from onetower.data import build_image_transform, train_wordpiece_tokenizer
from onetower.data.robust import decode_image
from onetower.processing import OneTowerImageProcessor

MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)  # not the defaults: they must be used
CAPTIONS = ["a red circle left of a blue square", "a green triangle", "two small yellow stars"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece_tokenizer(CAPTIONS, vocab_size=128, model_max_length=16)


@pytest.fixture()
def processor(tokenizer) -> OneTowerProcessor:
    return OneTowerProcessor.from_config(
        tokenizer, image_size=32, max_text_len=8, mean=MEAN, std=STD
    )


def _images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)
    rgba[:20, :, 3] = 0  # fully transparent rows whose colour channels are noise
    return {
        "square_rgb": Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
        "wide_rgb": Image.fromarray(rng.integers(0, 256, (37, 61, 3), dtype=np.uint8)),
        "tall_gray": Image.fromarray(rng.integers(0, 256, (70, 33), dtype=np.uint8), "L"),
        "rgba": Image.fromarray(rgba, "RGBA"),
    }


def _reference(image: Image.Image) -> torch.Tensor:
    """The transform the training loop evaluates with, on the image its data pipeline decodes."""
    transform = build_image_transform(
        32, train=False, mean=MEAN, std=STD, crop_pct=1.0, interpolation="bicubic"
    )
    return transform(decode_image(image))


@pytest.mark.parametrize("name", list(_images()))
def test_pixels_equal_the_training_eval_transform(processor, name: str) -> None:
    image = _images()[name]
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels[0], _reference(image), atol=1e-6, rtol=0)
    if name == "tall_gray":
        torch.testing.assert_close(pixels[0], _reference(image.convert("RGB")), atol=1e-6, rtol=0)
    if name == "rgba":  # transparent pixels become white as in training, not their noise colour
        naive = build_image_transform(32, train=False, mean=MEAN, std=STD)(image.convert("RGB"))
        assert not torch.allclose(pixels[0], naive, atol=1e-3)


def test_batch_of_mixed_images_and_groups(processor) -> None:
    images = list(_images().values())
    pixels = processor(images=images)["pixel_values"]
    assert pixels.shape == (4, 3, 32, 32)
    for row, image in zip(pixels, images, strict=True):
        torch.testing.assert_close(row, _reference(image), atol=1e-6, rtol=0)
    pairs = processor(images=[images[:2], images[2:]])["pixel_values"]  # NLVR2-style pairs
    assert pairs.shape == (2, 2, 3, 32, 32)
    torch.testing.assert_close(pairs[1, 0], _reference(images[2]), atol=1e-6, rtol=0)
    array = np.asarray(images[1])
    torch.testing.assert_close(processor(images=array)["pixel_values"][0], pixels[1])
    assert isinstance(processor(images=images[0], return_tensors="np")["pixel_values"], np.ndarray)


def test_text_pads_to_longest_and_truncates_at_max_text_len(processor, tokenizer) -> None:
    long = "a red circle left of a blue square and a green triangle above it"
    enc = processor(text=["a green triangle", long])
    assert set(enc) == {"input_ids", "attention_mask"}  # no token_type_ids: the model has none
    assert enc["input_ids"].shape == (2, 8)  # the long text is cut at max_text_len
    assert enc["input_ids"][1, -1] == tokenizer.sep_token_id
    assert enc["attention_mask"][0].tolist() == [1] * 5 + [0] * 3
    assert (enc["input_ids"][0, 5:] == tokenizer.pad_token_id).all()
    short = processor(text=["a green triangle", "a red circle"])
    assert short["input_ids"].shape == (2, 5)  # padded to the longest, not to max_text_len
    expected = tokenizer(
        ["a green triangle", long],
        padding="longest",
        truncation=True,
        max_length=8,
        return_tensors="pt",
    )
    assert torch.equal(enc["input_ids"], expected["input_ids"])
    single = processor(text="a green triangle")
    assert torch.equal(single["input_ids"], enc["input_ids"][:1, :5])


def test_save_load_round_trip_through_auto_processor(processor, tmp_path: Path) -> None:
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is OneTowerProcessor and loaded.max_text_len == 8
    assert type(loaded.image_processor) is OneTowerImageProcessor
    assert tuple(loaded.image_processor.image_mean) == MEAN
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is OneTowerImageProcessor
    images, texts = list(_images().values())[:2], CAPTIONS[:2]
    a, b = processor(images=images, text=texts), loaded(images=images, text=texts)
    assert a.keys() == b.keys() == {"input_ids", "attention_mask", "pixel_values"}
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_model_takes_the_processor_output(processor, tokenizer) -> None:
    config = OneTowerConfig.from_size("tiny", num_hidden_layers=1, vocab_size=len(tokenizer))
    model = OneTowerModel(config).eval()
    inputs = processor(images=list(_images().values())[:2], text=CAPTIONS[:2])
    out = model(**inputs)
    n_patches = (32 // config.patch_size) ** 2 + 1
    assert out.last_hidden_state.shape == (2, inputs["input_ids"].shape[1] + n_patches, 64)


def test_bad_input_is_named(processor, tmp_path: Path) -> None:
    image = _images()["square_rgb"]
    with pytest.raises(ValueError, match="got 2 texts and 1 images"):
        processor(images=[image], text=CAPTIONS[:2])
    with pytest.raises(ValueError, match="images=..., text=..."):
        processor()
    with pytest.raises(TypeError, match="PIL images or uint8 arrays.*float32"):
        processor(images=np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="same number of images"):
        processor(images=[[image, image], [image]])

    processor.save_pretrained(tmp_path / "p")
    (tmp_path / "p" / "processor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"p holds no .*missing processor_config\.json"):
        OneTowerProcessor.from_pretrained(tmp_path / "p")
    processor.save_pretrained(tmp_path / "q")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "q" / name).unlink()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "q") + ".*tokenizer.json"):
        OneTowerProcessor.from_pretrained(tmp_path / "q")
