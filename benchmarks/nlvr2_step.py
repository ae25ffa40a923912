"""NLVR2 fine-tuning step: the pair method in one encoder call against one call per image,
and UNITER's triplet method (statement and both images in one sequence).

``OneTowerForImagesAndTextClassification`` encodes the (text, image i) rows of both images in
one call, each row with its own image segment id; the reference here is the pair method as ViLT
runs it (and as the model ran it before): one encoder call per image, pooled features
concatenated. Both give the same outputs (``tests/training/test_finetune.py``). The triplet
row is another model (``multi_image_method="triplet"``, same encoder weights): one sequence of
text + 2 images per example instead of two of text + 1 image. Same batch, full training step
(forward, cross-entropy, backward, clip, AdamW), alternating rounds.

    .venv/bin/python benchmarks/nlvr2_step.py            # the synthetic NLVR2 recipe's size
    .venv/bin/python benchmarks/nlvr2_step.py --threads 2
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import (
    Contender,
    environment,
    json_path,
    pick_device,
    time_alternating,
    write_json,
)

from onetower import OneTowerConfig, OneTowerModel
from onetower.task_models import OneTowerForImagesAndTextClassification, pooled_features


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the recipe: 1 or 2)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=json_path("nlvr2_step"), help="where to write the record")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    torch.manual_seed(0)
    # finetune_nlvr2's model: the flava_like demo architecture, 48 px / 16 px patches
    cfg = OneTowerConfig.from_size(
        "small",
        hidden_size=128,
        num_attention_heads=4,
        intermediate_size=512,
        num_hidden_layers=2,
        text_tower_layers=2,
        image_tower_layers=2,
        image_size=48,
        patch_size=16,
        vocab_size=128,
        max_text_len=24,
        use_mask_token=True,
    )
    enc = OneTowerModel(cfg)
    model = OneTowerForImagesAndTextClassification.from_encoder(
        enc, {0: "False", 1: "True"}, "cls+patches"
    ).to(device)
    model.train()
    g = torch.Generator().manual_seed(0)
    B = a.batch
    ids = torch.randint(5, 128, (B, 16), generator=g).to(device)
    mask = torch.ones_like(ids)
    px = torch.randn(B, 2, 3, 48, 48, generator=g).to(device)
    labels = torch.randint(0, 2, (B,), generator=g).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    triplet = OneTowerForImagesAndTextClassification.from_encoder(
        enc, {0: "False", 1: "True"}, "cls+patches", multi_image_method="triplet"
    ).to(device)
    triplet.train()
    triplet_opt = torch.optim.AdamW(triplet.parameters(), lr=1e-4, foreach=True)

    def per_image() -> torch.Tensor:
        pooled = torch.cat(
            [
                pooled_features(
                    model.onetower(
                        input_ids=ids,
                        attention_mask=mask,
                        pixel_values=px[:, i],
                        image_segment=1 + i,
                    ),
                    "cls+patches",
                )
                for i in range(2)
            ],
            dim=-1,
        )
        return F.cross_entropy(model.classifier(pooled), labels)

    def one_call() -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask, pixel_values=px, labels=labels).loss

    def triplet_call() -> torch.Tensor:
        return triplet(input_ids=ids, attention_mask=mask, pixel_values=px, labels=labels).loss

    def step_of(loss_fn, m=model, o=opt):
        def step() -> None:
            loss_fn().backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            o.step()
            o.zero_grad(set_to_none=True)

        return step

    n = sum(p.numel() for p in model.parameters())
    rows = [
        Contender("pair method, one call", step_of(one_call), B, n, "2B rows, per-row segments"),
        Contender("pair method, one call per image", step_of(per_image), B, n, "2 calls of B"),
        Contender(
            "triplet method",
            step_of(triplet_call, triplet, triplet_opt),
            B,
            sum(p.numel() for p in triplet.parameters()),
            "B rows of text + 2 images",
        ),
    ]
    time_alternating(rows, device, a.warmup, a.rounds)
    ratio = rows[1].seconds / rows[0].seconds
    triplet_ratio = rows[0].seconds / rows[2].seconds
    for c in rows:
        print(f"{c.name:34s} {c.samples_per_s:7.1f} samples/s  {1e3 * c.seconds:6.0f} ms/step")
    print(f"one call / one call per image: {ratio:.2f}x")
    print(f"triplet / pair method (one call): {triplet_ratio:.2f}x")
    env = environment(device) | {"threads": a.threads}
    result = {
        "environment": env,
        "args": vars(a),
        "ratio": ratio,
        "triplet_ratio": triplet_ratio,
        "rows": [
            {"name": c.name, "samples_per_s": c.samples_per_s, "times_s": c.times} for c in rows
        ],
    }
    write_json(a.json, result)


if __name__ == "__main__":
    main()
