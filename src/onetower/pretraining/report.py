"""What a pretraining run shows a person at its end: MIM reconstructions and a summary."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from onetower.data import keys
from onetower.data.batch_masking import step_generator
from onetower.objectives import ObjectiveComposer
from onetower.pretraining.evaluate import EVAL_SEED
from onetower.training.plots import pyplot
from onetower.unimodal import patchify, unpatchify


@torch.no_grad()
def reconstructions(
    composer: ObjectiveComposer,
    batch: dict[str, torch.Tensor],
    mask: Any,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    path: Path,
) -> Path | None:
    """A PNG of images, their masked input and the reconstruction (visible patches pasted
    back, as MAE shows it), from the first head that predicts pixels; None without one."""
    batch = mask(
        {k: v.to(composer.model.device) for k, v in batch.items()}, step_generator(EVAL_SEED, 0)
    )
    if keys.MIM_MASK not in batch:
        return None
    was = composer.training
    composer.eval()
    pred = None
    for name, head in composer.heads.items():
        views = composer.views(batch, step_generator(EVAL_SEED + 1, 0), [name])
        pred = head.predict_pixels({v.kind: views[v.kind] for v in head.views}, views.loss_batch)
        if pred is not None:
            grid = views["masked_pair"].image_grid
            break
    composer.train(was)
    if pred is None:
        return None
    P = composer.model.config.patch_size
    images = batch[keys.PIXEL_VALUES].float()
    target = patchify(images, P)  # (B, N, P*P*C)
    masked = batch[keys.MIM_MASK].bool()[..., None]  # (B, N, 1)
    # masked patches shown in magenta, in normalised pixel space
    fill = ((torch.tensor([1.0, 0.0, 1.0]) - torch.tensor(mean)) / torch.tensor(std)).to(target)
    fill = fill.repeat(P * P)[None, None]  # (1, 1, P*P*C) in patchify's (p, q, c) order
    shown = unpatchify(torch.where(masked, fill, target), P, grid)
    recon = unpatchify(torch.where(masked, pred.float(), target), P, grid)
    return plot_reconstructions(images, shown, recon, path, mean, std)


def plot_reconstructions(
    images: torch.Tensor,
    masked: torch.Tensor,
    recon: torch.Tensor,
    path: str | Path,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Path:
    """Rows of (original, masked input, reconstruction) images.

    Args:
        images, masked, recon: normalised pixels `(B, C, H, W)`.
        path: where to write the PNG.
        mean, std: the normalisation to undo for display.
    """
    plt = pyplot()
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    cols = [(x.detach().float().cpu() * s + m).clamp(0, 1) for x in (images, masked, recon)]
    B = images.shape[0]
    fig, axes = plt.subplots(B, 3, figsize=(6, 2 * B), squeeze=False)
    for b in range(B):
        for c, (name, x) in enumerate(
            zip(("image", "masked", "reconstruction"), cols, strict=True)
        ):
            axes[b, c].imshow(x[b].permute(1, 2, 0).numpy())  # (C, H, W) -> (H, W, C)
            axes[b, c].axis("off")
            if b == 0:
                axes[b, c].set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def versus_chance(accuracy: float, chance: float, n: float) -> str:
    """``""`` when ``accuracy`` (%) is above chance by more than two binomial standard errors
    at ``n`` examples; else a clause saying it is not, and how wide the noise is."""
    if not n or chance != chance:  # no examples, or chance unknown (NaN)
        return ""
    margin = 200.0 * math.sqrt(chance / 100.0 * (1.0 - chance / 100.0) / n)  # 2 SE, points
    if accuracy > chance + margin:
        return ""
    return (
        f"; not above chance: 2 standard errors are {margin:.1f} points here, so the "
        "contrastive embeddings do not separate these classes"
    )


def heads_at_chance(losses: dict[str, float]) -> list[str]:
    """A clause for each head whose ``<head>_loss`` is within 2% of its ``<head>_chance_loss``
    (the loss of knowing only the label shares; ITM reports it): still at chance."""
    out = []
    for key, chance in losses.items():
        if not key.endswith("_chance_loss"):
            continue
        head = key.removesuffix("_chance_loss")
        loss = losses.get(f"{head}_loss")
        if loss is not None and loss >= 0.98 * chance:
            out.append(
                f"{head} is still at chance (held-out loss {loss:.3f}, the entropy of its labels "
                f"{chance:.3f}): it has not begun to compare image and text, so re-ranking with "
                "it cannot help yet; train longer"
            )
    return out


def summarise(recipe: str, metrics: dict[str, float], info: Any) -> str:
    """One paragraph a person reads at the end of a run."""
    losses = info.history.get("loss", [])
    parts = [
        f"{recipe}: {info.steps_this_run} steps in {info.seconds / 60:.1f} min "
        f"({info.samples_per_s:.0f} samples/s)",
        f"training loss {losses[0][1]:.3f} -> {losses[-1][1]:.3f}" if len(losses) > 1 else "",
    ]
    if "eval/i2t_r1" in metrics:
        parts.append(
            f"zero-shot retrieval on held-out pairs: image->text R@1 {metrics['eval/i2t_r1']:.1f}%, "
            f"text->image R@1 {metrics['eval/t2i_r1']:.1f}% (chance {metrics['eval/retrieval_chance']:.1f}%)"
        )
    for key, value in metrics.items():
        if key.startswith("eval/zero_shot_") and key.endswith("_acc"):
            group = key[len("eval/zero_shot_") : -len("_acc")]
            chance = metrics.get(f"eval/zero_shot_{group}_chance", float("nan"))
            n = metrics.get(f"eval/zero_shot_{group}_n", 0)
            parts.append(
                f"zero-shot {group} classification {value:.1f}% (chance {chance:.1f}%, "
                f"{n:.0f} held-out images naming one {group}{versus_chance(value, chance, n)})"
            )
        if key.endswith("_mlm_acc_with_image"):
            group = key[len("eval/") : -len("_mlm_acc_with_image")]
            blank = metrics.get(f"eval/{group}_mlm_acc_blank_image", float("nan"))
            parts.append(
                f"{group} words predicted by MLM {value:.1f}% with the image vs {blank:.1f}% "
                "with it blanked"
            )
    held = {k[5:]: v for k, v in sorted(metrics.items()) if k.endswith("_loss")}
    shown = {k: v for k, v in held.items() if not k.endswith("_chance_loss")}
    if shown:
        parts.append("held-out losses: " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
    parts += heads_at_chance(held)
    parts.append(
        f"model saved to {info.final_dir} (`import onetower` then "
        f"AutoModel.from_pretrained('{info.final_dir}'), or trust_remote_code=True without onetower)"
    )
    parts.append("plots: " + ", ".join(str(p) for p in info.files.values()))
    return "; ".join(p for p in parts if p) + "."
