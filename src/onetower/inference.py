"""Ask a saved task model about image files, from Python or the command line.

    python -m onetower.inference runs/finetune_vqa/final photo.jpg "what colour is the circle?"
    python -m onetower.inference runs/finetune_nlvr2/final left.png right.png "both images contain a square"

A VQA model prints its top answers with their scores (sigmoid of the logits: the model is
trained with per-answer BCE); an NLVR2 model prints True / False with its probability.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers
from PIL import Image, UnidentifiedImageError

from onetower.hub import model_class
from onetower.processing import OneTowerProcessor
from onetower.task_models import (
    OneTowerForImagesAndTextClassification,
    OneTowerForQuestionAnswering,
    TaskModel,
)


def load_task_model(
    folder: str | Path,
) -> tuple[
    OneTowerForQuestionAnswering | OneTowerForImagesAndTextClassification, OneTowerProcessor
]:
    """The task model saved in ``folder`` (eval mode) and its processor.

    Raises:
        FileNotFoundError: no model or no processor in the folder.
        ValueError: the folder holds a model that is not a VQA / NLVR2 task model.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no saved model (config.json is missing)")
    cls = model_class(folder)  # the class named in config.json
    if not issubclass(cls, TaskModel):
        raise ValueError(
            f"{folder} holds a {cls.__name__}, not a fine-tuned task model "
            "(VQA / NLVR2): fine-tune it with recipes/finetune_vqa.py first"
        )
    return cls.from_pretrained(folder).eval(), OneTowerProcessor.from_pretrained(folder)


def _open(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"image {path} cannot be decoded: {e}") from None


@torch.no_grad()
def answer_question(
    model: OneTowerForQuestionAnswering,
    processor: OneTowerProcessor,
    image: str | Path,
    question: str,
    top_k: int = 5,
) -> list[tuple[str, float]]:
    """The ``top_k`` answers to ``question`` about the image file, with their scores."""
    if not question.strip():
        raise ValueError("the question is empty")
    inputs = processor(images=_open(image), text=question, return_tensors="pt")
    logits = model(**inputs).logits[0]  # (A,)
    scores, ids = logits.sigmoid().topk(min(top_k, logits.numel()))
    return [
        (model.config.id2label[int(i)], float(s))
        for s, i in zip(scores.tolist(), ids.tolist(), strict=True)
    ]


@torch.no_grad()
def classify_statement(
    model: OneTowerForImagesAndTextClassification,
    processor: OneTowerProcessor,
    images: list[str | Path],
    statement: str,
) -> tuple[str, float]:
    """NLVR2: whether ``statement`` is true of the image files; ``(label, probability)``."""
    if len(images) != model.num_images:
        raise ValueError(f"this model reads {model.num_images} images, got {len(images)}")
    if not statement.strip():
        raise ValueError("the statement is empty")
    inputs = processor(text=statement, return_tensors="pt")
    pixels = processor(images=[_open(p) for p in images], return_tensors="pt")["pixel_values"]
    pixels = pixels.unsqueeze(0)  # (I, C, H, W) -> (1, I, C, H, W)
    probs = model(**inputs, pixel_values=pixels).logits[0].softmax(-1)  # (classes,)
    best = int(probs.argmax())
    return model.config.id2label[best], float(probs[best])


def main(argv: list[str] | None = None) -> None:
    """CLI: ``MODEL_DIR IMAGE [IMAGE ...] TEXT``."""
    p = argparse.ArgumentParser(
        prog="python -m onetower.inference", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("model", help="folder of a fine-tuned model (e.g. runs/finetune_vqa/final)")
    p.add_argument("images", nargs="+", help="image file(s): one for VQA, two for NLVR2")
    p.add_argument("text", help="the question (VQA) or statement (NLVR2)")
    p.add_argument("--top-k", type=int, default=5, help="answers to print (VQA)")
    args = p.parse_args(argv)
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar on a CLI answer
    try:
        model, processor = load_task_model(args.model)
        if isinstance(model, OneTowerForQuestionAnswering):
            if len(args.images) != 1:
                p.error(f"a VQA model answers about one image, got {len(args.images)}")
            for answer, score in answer_question(
                model, processor, args.images[0], args.text, args.top_k
            ):
                print(f"{score:6.3f}  {answer}")
        else:
            label, prob = classify_statement(model, processor, args.images, args.text)
            print(f"{label} (p = {prob:.3f})")
    except (FileNotFoundError, ValueError) as e:
        p.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
