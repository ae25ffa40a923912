"""Samples/s of the training data pipeline vs the tiny model's training step.

Writes a synthetic imagefolder at 224 px, then times the full training pipeline (PNG decode,
timm RandomResizedCrop + normalise, tokenise, MLM + patch masks, collate) with 0 workers (the
per-worker rate) and with 2 workers, and a forward + backward + AdamW step of the recipe-size
model (``small`` at 64 px) for comparison. Not a test: numbers depend on the machine.

    .venv/bin/python benchmarks/data_pipeline.py [--n 512] [--batch 32] [--image-size 224]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from onetower.data import (
    PairCollator,
    PatchMasking,
    TextMasking,
    WorldSpec,
    build_dataset,
    build_image_transform,
    keys,
    load_pairs,
    load_tokenizer,
    write_synthetic_world,
)
from onetower.data.batch_masking import BatchMasker, step_generator


def loader_rate(world, tokenizer, image_size: int, batch: int, workers: int) -> float:
    src = load_pairs(world.pairs_dir, "train", cache_dir=str(world.root / "hf_cache"))
    ds = build_dataset(src, build_image_transform(image_size, train=True), seed=0)
    grid = (image_size // 16, image_size // 16)
    collate = PairCollator(tokenizer, 24, pad_to_max_length=True)
    # masks are drawn on the main process per step, as the training loop draws them
    masker = BatchMasker(tokenizer, TextMasking(), PatchMasking(grid, 0.75))
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    for _ in loader:  # warm-up epoch: worker start-up, file cache
        pass
    start, n = time.perf_counter(), 0
    for step, b in enumerate(loader):
        n += masker(b, step_generator(0, step))[keys.PIXEL_VALUES].shape[0]
    return n / (time.perf_counter() - start)


def model_rate(batch: int, steps: int = 10) -> float | None:
    """Training-step samples/s of the recipe-size model; None if the model can't be built."""
    try:
        from onetower import OneTowerConfig, OneTowerModel
    except ImportError:
        return None
    config = OneTowerConfig.from_size("small", vocab_size=512, max_text_len=24)
    model = OneTowerModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (batch, 24), generator=g)
    pixels = torch.randn(batch, 3, config.image_size, config.image_size, generator=g)
    for i in range(steps + 2):
        if i == 2:  # skip warm-up steps
            start = time.perf_counter()
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels)
        out.last_hidden_state.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        spec = WorldSpec(
            n_train=args.n,
            n_val=0,
            image_size=args.image_size,
            vqa_train=0,
            vqa_val=0,
            nlvr2_train=0,
            nlvr2_val=0,
        )
        world = write_synthetic_world(tmp, spec)
        print(
            f"wrote {args.n} images at {args.image_size} px in {time.perf_counter() - start:.1f}s"
        )
        tokenizer = load_tokenizer(world.tokenizer_dir)
        for workers in (0, 2):
            rate = loader_rate(world, tokenizer, args.image_size, args.batch, workers)
            print(f"loader, {workers} workers: {rate:8.1f} samples/s")
    rate = model_rate(args.batch)
    if rate is not None:
        print(f"model 'small' @64px train step: {rate:8.1f} samples/s")


if __name__ == "__main__":
    main()
