"""Full training-step throughput of each recipe against its peer at matched sizes.

Every row is the real step (forward of every view, all heads, backward, clip, AdamW step),
timed in alternating rounds after warm-up inside one process; ratios compare rows of the same
pool. Peers are built from ``transformers`` at the same width, depth, heads, patch count and
text length:

- Hugging Face ViLT: ``ViltForMaskedLM`` MLM pass + an ITM pass (``ViltModel`` pooled output
  -> Linear(D, 2)) over the same B pairs with half of the images swapped, as ViLT pretrains;
- Hugging Face ``FlavaForPreTraining`` with ``mim_labels`` given, so its DALL-E codebook is
  not run (neither is one in ``flava_like``, which regresses pixels); MMM image / text, ITM
  and global contrastive losses, half of the pairs negatives; image vocabulary 8192 as FLAVA.
- ``m3ae_like`` at 75% masking is compared with the same model encoding every token
  (``masking off``: keep ids = all positions; the same decoder and losses run).

CPU fp32 by default; on CUDA bf16 autocast, ``max_memory_allocated`` and MFU.

    .venv/bin/python benchmarks/train_step.py [--quick] [--pools vilt,flava,m3ae]
        [--batch 32] [--width 256] [--depth 4] [--heads 4] [--patches 64] [--text-len 16]
        [--warmup 2] [--rounds 5] [--peak-tflops 989] [--json benchmarks/train_step.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
from _common import (
    FLOPS_FORMULA,
    Contender,
    autocast,
    environment,
    json_path,
    peak_memory,
    pick_device,
    recipe_step,
    size_overrides,
    step_flops,
    synthetic_batch,
    time_alternating,
    to,
    tokenizer,
    write_json,
)
from torch import nn
from transformers import FlavaConfig, FlavaForPreTraining, ViltConfig, ViltForMaskedLM

from onetower.data import PatchMasking, TextMasking, keys
from onetower.data.batch_masking import BatchMasker, step_generator
from onetower.training.optim import build_optimizer

LAYER = dict(hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _peer_step(
    module: nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    device,
    lr=1e-3,
    wd=0.01,
    fused: bool | None = None,
) -> Callable[[], None]:
    """The same optimiser, clipping and zero_grad as the recipes' step, around ``loss_fn``."""
    optimizer = build_optimizer(module, lr, wd, fused=fused)

    def step() -> None:
        with autocast(device):
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _itm_split(batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images for the ITM rows (second half swapped with another sample's) and labels."""
    B = batch[keys.PIXEL_VALUES].shape[0]
    rows = torch.arange(B)
    half = B // 2
    rows[half:] = torch.roll(rows[half:], 1)  # a different image for every negative row
    labels = torch.cat([torch.ones(half), torch.zeros(B - half)]).long()
    return batch[keys.PIXEL_VALUES][rows.to(device)], labels.to(device)


def hf_vilt(tok, a, device, fused: bool | None) -> Contender:
    """Hugging Face ViLT: MLM pass + ITM pass (vilt_like's masking: 15%, whole words)."""
    side = int(a.patches**0.5)
    cfg = ViltConfig(
        vocab_size=len(tok),
        max_position_embeddings=a.text_len,
        hidden_size=a.width,
        num_hidden_layers=a.depth,
        num_attention_heads=a.heads,
        intermediate_size=4 * a.width,
        image_size=side * 8,
        patch_size=8,
        pad_token_id=tok.pad_token_id,
        **LAYER,
    )
    model = nn.ModuleDict({"vilt": ViltForMaskedLM(cfg), "itm": nn.Linear(a.width, 2)})
    model.to(device).train()
    batch = synthetic_batch(tok, a.batch, a.text_len, side * 8)
    # masks are data-pipeline work for the peer (a collator), drawn once: not timed
    batch = to(
        BatchMasker(tok, TextMasking(0.15, whole_word=True))(batch, step_generator(0, 0)), device
    )
    itm_pixels, itm_labels = _itm_split(batch, device)

    def loss() -> torch.Tensor:
        mlm = model["vilt"](
            input_ids=batch[keys.MLM_INPUT_IDS],
            pixel_values=batch[keys.PIXEL_VALUES],
            attention_mask=batch[keys.ATTENTION_MASK],
            labels=batch[keys.MLM_LABELS],
        )
        pooled = (
            model["vilt"]
            .vilt(
                input_ids=batch[keys.INPUT_IDS],
                pixel_values=itm_pixels,
                attention_mask=batch[keys.ATTENTION_MASK],
            )
            .pooler_output
        )
        itm = nn.functional.cross_entropy(model["itm"](pooled).float(), itm_labels)
        return mlm.loss + itm

    n = sum(p.numel() for p in model.parameters())
    return Contender(
        "HF ViLT",
        _peer_step(model, loss, device, fused=fused),
        a.batch,
        n,
        "ViltForMaskedLM (MLM) + ViltModel pooled -> Linear (ITM), 2 passes of B",
    )


def hf_flava(tok, a, device, fused: bool | None) -> Contender:
    """Hugging Face FlavaForPreTraining with mim_labels (codebook not run); towers and fusion
    as deep as flava_like's at this size."""
    side, half = int(a.patches**0.5), a.depth // 2
    common = dict(
        hidden_size=a.width, num_attention_heads=a.heads, intermediate_size=4 * a.width, **LAYER
    )
    cfg = FlavaConfig(
        image_config=dict(num_hidden_layers=half, image_size=side * 8, patch_size=8, **common),
        text_config=dict(
            num_hidden_layers=half,
            vocab_size=len(tok),
            max_position_embeddings=a.text_len,
            **common,
        ),
        multimodal_config=dict(num_hidden_layers=half, **common),
        hidden_size=a.width,
        projection_dim=a.width,
        init_codebook=False,
    )
    model = FlavaForPreTraining(cfg).to(device).train()
    batch = synthetic_batch(tok, a.batch, a.text_len, side * 8)
    masker = BatchMasker(tok, TextMasking(0.3), PatchMasking((side, side), 0.4, block=True))
    batch = to(masker(batch, step_generator(0, 0)), device)  # flava_like's masking, drawn once
    pixels, itm_labels = _itm_split(batch, device)
    g = torch.Generator().manual_seed(0)
    mim_labels = torch.randint(0, cfg.image_config.vocab_size, (a.batch, a.patches), generator=g)
    mim_labels = mim_labels.to(device)

    def loss() -> torch.Tensor:
        return model(
            input_ids=batch[keys.INPUT_IDS],
            input_ids_masked=batch[keys.MLM_INPUT_IDS],
            pixel_values=pixels,
            attention_mask=batch[keys.ATTENTION_MASK],
            bool_masked_pos=batch[keys.MIM_MASK],
            mlm_labels=batch[keys.MLM_LABELS],
            mim_labels=mim_labels.clone(),
            itm_labels=itm_labels,
        ).loss

    n = sum(p.numel() for p in model.parameters())
    notes = (
        f"FlavaForPreTraining, image/text/multimodal encoders {half}/{half}/{half} layers "
        "(= flava_like towers/fusion), mim_labels given: codebook not run"
    )
    return Contender("HF FLAVA", _peer_step(model, loss, device, fused=fused), a.batch, n, notes)


def _unmasked(batch: dict) -> dict:
    """m3ae with masking off: encode every text token and patch (the same labels)."""
    b = dict(batch)
    B, T = b[keys.INPUT_IDS].shape
    N = b[keys.MIM_MASK].shape[1]
    device = b[keys.INPUT_IDS].device
    b[keys.TEXT_KEEP_IDS] = torch.arange(T, device=device).expand(B, T)
    b[keys.IMAGE_KEEP_IDS] = torch.arange(N, device=device).expand(B, N)
    return b


def pools(a, tok, device) -> dict[str, list[tuple[Contender, str | None]]]:
    """Timing pools: (contender, name of the row it is compared with)."""
    size = size_overrides(a.width, a.depth, a.heads, a.patches, a.text_len)
    half = a.depth // 2
    flava = [
        *size,
        f"model.num_hidden_layers={half}",
        f"model.text_tower_layers={half}",
        f"model.image_tower_layers={half}",
    ]
    fused = None if device.type == "cuda" else False  # the loop's choice: fused on CUDA only
    out: dict[str, list[tuple[Contender, str | None]]] = {}
    if "vilt" in a.pools:
        vilt = recipe_step("vilt_like", size, a.batch, device, tok, optimizer_fused=fused)
        rows = [(vilt, "HF ViLT"), (hf_vilt(tok, a, device, fused), None)]
        if not a.no_ablations:
            nomask = recipe_step(
                "vilt_like",
                size,
                a.batch,
                device,
                tok,
                "vilt_like, no attention mask",
                edit_batch=lambda b: {k: v for k, v in b.items() if k != keys.ATTENTION_MASK},
                optimizer_fused=fused,
            )
            ckpt = recipe_step(
                "vilt_like",
                [*size, "train.activation_checkpointing=true"],
                a.batch,
                device,
                tok,
                "vilt_like, activation checkpointing",
                optimizer_fused=fused,
            )
            fus = recipe_step(
                "vilt_like",
                size,
                a.batch,
                device,
                tok,
                "vilt_like, fused AdamW",
                optimizer_fused=True,
            )
            rows += [(nomask, "vilt_like"), (ckpt, "vilt_like"), (fus, "vilt_like")]
            if a.compile:
                comp = recipe_step(
                    "vilt_like",
                    [*size, "train.compile=true"],
                    a.batch,
                    device,
                    tok,
                    "vilt_like, torch.compile encoder",
                    optimizer_fused=fused,
                )
                rows.append((comp, "vilt_like"))
        out["vilt"] = rows
    if "flava" in a.pools:
        rows = [
            (
                recipe_step("flava_like", flava, a.batch, device, tok, optimizer_fused=fused),
                "HF FLAVA",
            ),
            (hf_flava(tok, a, device, fused), None),
        ]
        # FLAVA's own layout: ITM on the masked pass (half the rows get another image, as the
        # HF FLAVA peer's itm_labels), MLM / MIM on the matched rows; no ITM pass of its own
        masked_itm = [*flava, "objectives.itm.masked_pass=true", "objectives.itm.neg_ratio=0.5"]
        rows.append(
            (
                recipe_step(
                    "flava_like",
                    masked_itm,
                    a.batch,
                    device,
                    tok,
                    "flava_like, ITM on the masked pass",
                    optimizer_fused=fused,
                ),
                "HF FLAVA",
            )
        )
        if not a.no_ablations:
            pd = recipe_step(
                "flava_like",
                [*flava, "objectives.contrastive.patch_dropout=0.5"],
                a.batch,
                device,
                tok,
                "flava_like, patch dropout 0.5",
                optimizer_fused=fused,
            )
            rows.append((pd, "flava_like"))
        out["flava"] = rows
    if "m3ae" in a.pools:
        m3 = recipe_step(
            "m3ae_like", size, a.batch, device, tok, "m3ae_like (75% masked)", optimizer_fused=fused
        )
        off = recipe_step(
            "m3ae_like",
            size,
            a.batch,
            device,
            tok,
            "m3ae_like, masking off",
            edit_batch=_unmasked,
            optimizer_fused=fused,
        )
        rows = [(m3, "m3ae_like, masking off"), (off, None)]
        # M3AE's own decoder is narrower than its encoder: 8 x 512 after 12 x 768 (base) costs
        # 0.30 of the encoder per token; width / 2 and the encoder's depth here cost 0.25.
        # The recipe's decoder (full width, depth 2 after 4) costs 0.5.
        prop = [
            *size,
            f"objectives.m3ae.decoder_dim={a.width // 2}",
            f"objectives.m3ae.decoder_depth={a.depth}",
        ]
        m3p = recipe_step(
            "m3ae_like",
            prop,
            a.batch,
            device,
            tok,
            "m3ae_like, M3AE decoder proportions (75% masked)",
            optimizer_fused=fused,
        )
        offp = recipe_step(
            "m3ae_like",
            prop,
            a.batch,
            device,
            tok,
            "m3ae_like, M3AE decoder proportions, masking off",
            edit_batch=_unmasked,
            optimizer_fused=fused,
        )
        rows += [(m3p, "m3ae_like, M3AE decoder proportions, masking off"), (offp, None)]
        if not a.no_ablations:
            rows.append(
                (recipe_step("beit3_like", size, a.batch, device, tok, optimizer_fused=fused), None)
            )
        out["m3ae"] = rows
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patches", type=int, default=64)
    p.add_argument("--text-len", type=int, default=16)
    p.add_argument("--vocab", type=int, default=512, help="tokenizer size (the synthetic world's)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pools", default="vilt,flava,m3ae")
    p.add_argument("--compile", action="store_true", help="also time train.compile=true")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    p.add_argument("--no-ablations", action="store_true", help="only the recipes and peers")
    p.add_argument("--device", default=None)
    p.add_argument("--peak-tflops", type=float, default=None, help="for MFU (H100 bf16: 989)")
    p.add_argument(
        "--quick", action="store_true", help="smoke: tiny size, 1+2 rounds, no ablations"
    )
    p.add_argument("--json", default=json_path("train_step"), help="where to write the record")
    a = p.parse_args()
    a.pools = set(a.pools.split(","))
    if a.quick:
        a.batch, a.width, a.heads, a.patches, a.warmup, a.rounds = 4, 64, 2, 16, 1, 2
        a.no_ablations = True
    device = pick_device(a.device)
    tok = tokenizer(a.vocab)
    env = environment(device)
    print(json.dumps(env))
    results: dict = {
        "environment": env,
        "args": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(a).items()},
        "pools": {},
    }
    for pool_name, rows in pools(a, tok, device).items():
        contenders = [c for c, _ in rows]
        time_alternating(contenders, device, a.warmup, a.rounds)
        by_name = {c.name: c for c in contenders}
        table = []
        print(
            f"\n== pool {pool_name}: best of {a.rounds} alternating rounds after {a.warmup} warm-up"
        )
        print(
            f"{'step':38s} {'samples/s':>9s} {'ms/step':>8s} {'ratio':>15s} {'per FLOP':>8s} "
            f"{'peak MB':>8s} {'GFLOP':>7s}"
        )
        flops = {c.name: step_flops(c.step) for c in contenders}
        for c, peer in rows:
            mem = None if a.no_memory else peak_memory(c.step, device)
            ratio = by_name[peer].seconds / c.seconds if peer else None
            # the same ratio per unit of work: FLOP/s over the peer's FLOP/s
            per_flop = ratio * flops[c.name] / flops[peer] if peer else None
            row = {
                "name": c.name,
                "samples_per_s": c.samples_per_s,
                "ms_per_step": 1e3 * c.seconds,
                "median_ms": 1e3 * c.median,
                "times_s": c.times,
                "vs": peer,
                "ratio": ratio,
                "flop_throughput_ratio": per_flop,
                "peak_memory_bytes": mem,
                "flops_per_step": flops[c.name],
                "params": c.params,
                "notes": c.notes,
            }
            if a.peak_tflops:
                row["mfu"] = flops[c.name] / c.seconds / (a.peak_tflops * 1e12)
            table.append(row)
            r = f"{ratio:5.2f}x {peer[:8]}" if peer else ""
            pf = f"{per_flop:7.2f}x" if peer else ""
            m = f"{mem / 2**20:8.0f}" if mem is not None else "       -"
            mfu = f"  MFU {row['mfu']:.1%}" if a.peak_tflops else ""
            print(
                f"{c.name:38s} {c.samples_per_s:9.1f} {1e3 * c.seconds:8.0f} {r:>15s} {pf:>8s} {m} "
                f"{flops[c.name] / 1e9:7.1f}{mfu}"
            )
        for c, _ in rows:
            print(f"  {c.name}: {c.params / 1e6:.2f} M params; {c.notes}")
        results["pools"][pool_name] = table
    print(f"\n{FLOPS_FORMULA}")
    results["flops_formula"] = FLOPS_FORMULA
    write_json(a.json, results)


if __name__ == "__main__":
    main()
