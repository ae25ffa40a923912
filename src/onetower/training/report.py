"""The end of a run: the final model (written atomically), plots, metrics and a summary."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from omegaconf import DictConfig

from onetower.data import keys
from onetower.data.batch_masking import step_generator
from onetower.objectives import ObjectiveComposer, PixelTarget, StepViews
from onetower.processing import OneTowerProcessor
from onetower.training.evaluate import EVAL_SEED, eval_batches
from onetower.training.plots import plot_losses, plot_reconstructions
from onetower.training.retrieval import save_heads
from onetower.unimodal import patchify, unpatchify


@dataclass
class RunResult:
    """What a finished run returns (and writes to ``metrics.json``)."""

    output_dir: Path
    final_model: Path
    steps: int
    metrics: dict[str, float]
    history: dict[str, list[tuple[int, float]]]
    summary: str
    files: dict[str, Path] = field(default_factory=dict)


def save_final_model(
    model: Any, tokenizer: Any, out_dir: Path, extra: Callable[[Path], Any] | None = None
) -> Path:
    """``save_pretrained`` into ``out_dir/final`` via a temporary folder and a rename, so an
    interrupted save never replaces a good model with a half-written one. ``extra(folder)``
    writes more files (e.g. the processor) into the folder before the rename."""
    final, tmp, old = out_dir / "final", out_dir / ".final.tmp", out_dir / ".final.old"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(str(tmp))
    if extra is not None:
        extra(tmp)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def save_extras(folder: Path, core: ObjectiveComposer, tokenizer: Any, cfg: DictConfig) -> None:
    """What goes with the encoder in ``final/``: the objective heads (retrieval and zero-shot
    evaluation need them) and the processor (tokenizer + eval image transform)."""
    save_heads(core, folder)
    c = core.model.config
    processor = OneTowerProcessor.from_config(tokenizer, c.image_size, cfg.data.max_text_len,
                                              mean=list(cfg.data.mean), std=list(cfg.data.std))  # fmt: skip
    processor.save_pretrained(str(folder))


@torch.no_grad()
def reconstructions(
    core: ObjectiveComposer, masker: Any, data: Any, cfg: DictConfig, path: Path
) -> Path | None:
    """MIM recipes with pixel targets: a PNG of images, their masked input and the
    reconstruction (visible patches pasted back, as MAE shows it)."""
    heads = [
        h for h in core.heads.values() if hasattr(h, "pixels") and isinstance(h.target, PixelTarget)
    ]
    if not heads or masker.patch is None:
        return None
    head = heads[0]
    n = cfg.eval.reconstructions
    batch, _ = next(eval_batches(data.val, data.tokenizer, cfg.data.max_text_len, n, n))
    batch = {k: v.to(core.model.device) for k, v in batch.items()}
    batch = masker(batch, step_generator(EVAL_SEED, 0))
    was = core.training
    core.eval()
    out = StepViews(core.model, batch, core.view_options, core.generator)["masked_pair"]
    pred = head.pixels(out, batch)  # (B, N, P*P*C)
    core.train(was)
    P, grid = core.model.config.patch_size, out.image_grid
    images = batch[keys.PIXEL_VALUES].float()
    target = patchify(images, P)  # (B, N, P*P*C)
    if (
        head.target.norm_pix_loss
    ):  # predictions are per-patch normalised: undo with the truth's stats
        mu, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + head.target.eps) ** 0.5 + mu
    masked = batch[keys.MIM_MASK].bool()[..., None]  # (B, N, 1)
    # masked patches shown in magenta (no shape has that colour), in normalised pixel space
    mean, std = torch.tensor(cfg.data.mean), torch.tensor(cfg.data.std)
    fill = ((torch.tensor([1.0, 0.0, 1.0]) - mean) / std).to(target)  # (C,)
    fill = fill.repeat(P * P)[None, None]  # (1, 1, P*P*C) in patchify's (p, q, c) order
    shown = unpatchify(torch.where(masked, fill, target), P, grid)
    recon = unpatchify(torch.where(masked, pred.float(), target), P, grid)
    return plot_reconstructions(
        images, shown, recon, path, tuple(cfg.data.mean), tuple(cfg.data.std)
    )


def summarise(cfg: DictConfig, metrics: dict[str, float], history: dict, steps: int, seconds: float,
              samples_per_s: float, final: Path, files: dict[str, Path]) -> str:  # fmt: skip
    """One paragraph a person reads at the end of a run."""
    losses = history.get("loss", [])
    parts = [
        f"{cfg.run.recipe}: {steps} steps in {seconds / 60:.1f} min ({samples_per_s:.0f} samples/s)",
        f"training loss {losses[0][1]:.3f} -> {losses[-1][1]:.3f}" if len(losses) > 1 else "",
    ]
    if "eval/i2t_r1" in metrics:
        parts.append(
            f"zero-shot retrieval on held-out pairs: image->text R@1 {metrics['eval/i2t_r1']:.1%}, "
            f"text->image R@1 {metrics['eval/t2i_r1']:.1%} (chance {metrics['eval/retrieval_chance']:.1%})"
        )
    for group in ("colour", "shape"):
        if f"eval/{group}_mlm_acc_with_image" in metrics:
            parts.append(
                f"{group} words predicted by MLM {metrics[f'eval/{group}_mlm_acc_with_image']:.1%} "
                f"with the image vs {metrics[f'eval/{group}_mlm_acc_blank_image']:.1%} with it blanked"
            )
    held = [f"{k[5:]} {v:.3f}" for k, v in sorted(metrics.items()) if k.endswith("_loss")]
    if held:
        parts.append("held-out losses: " + ", ".join(held))
    parts.append(f"model saved to {final} (load with OneTowerModel.from_pretrained)")
    parts.append("plots: " + ", ".join(str(p) for p in files.values()))
    return "; ".join(p for p in parts if p) + "."


def finish_run(cfg: DictConfig, accelerator: Accelerator, core: ObjectiveComposer, masker: Any,
               data: Any, state: Any, metrics: dict[str, float], seconds: float,
               start_step: int) -> RunResult:  # fmt: skip
    """Write the final model, plots and metrics on the main process; print the summary."""
    out_dir = Path(cfg.run.output_dir)
    final, files, summary = out_dir / "final", {}, ""
    sps = [v for _, v in state.history.get("samples_per_s", [])]
    identical = replicas_identical(accelerator, core)
    if accelerator.is_main_process:
        # the heads go with the encoder: retrieval / zero-shot evaluation needs them
        final = save_final_model(core.model, data.tokenizer, out_dir,
                                 lambda folder: save_extras(folder, core, data.tokenizer, cfg))  # fmt: skip
        files["losses"] = plot_losses(state.history, out_dir / "losses.png", cfg.run.recipe)
        recon = reconstructions(core, masker, data, cfg, out_dir / "reconstructions.png")
        if recon is not None:
            files["reconstructions"] = recon
        skipped = data.counter.summary()
        summary = summarise(cfg, metrics, state.history, state.step - start_step, seconds,
                            sum(sps) / max(len(sps), 1), final, files)  # fmt: skip
        if data.counter.skipped:
            summary += f" Skipped samples: {skipped}."
        record = {"steps": state.step, "world_size": accelerator.num_processes,
                  "replicas_identical": identical, "metrics": metrics, "summary": summary,
                  "skipped": data.counter.counts()}  # fmt: skip
        (out_dir / "metrics.json").write_text(json.dumps(record, indent=1))
        (out_dir / "history.json").write_text(json.dumps(state.history))
        accelerator.print("\n" + summary)
    accelerator.wait_for_everyone()
    return RunResult(out_dir, final, state.step, metrics, state.history, summary, files)


@torch.no_grad()
def replicas_identical(accelerator: Accelerator, core: ObjectiveComposer) -> bool:
    """Whether every process ends with bit-identical weights (a DDP invariant, checked)."""
    flat = torch.cat([p.detach().double().flatten() for p in core.parameters()])
    # (world, 2) fingerprints; exact equality of sums of values and of squares
    prints = accelerator.gather(
        torch.stack([flat.sum(), (flat * flat).sum()])[None].to(accelerator.device)
    )
    return bool((prints == prints[0]).all())
