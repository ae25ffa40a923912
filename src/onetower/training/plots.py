"""The loss curves every run plots (PNG)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_losses(history: dict[str, list[tuple[int, float]]], path: str | Path, title: str) -> Path:
    """One panel per training loss (``loss``, ``mlm_loss``, ...), step on x; held-out values
    (``eval/<name>``) are drawn as points on the panel of the same name, and a head's chance
    level (``<head>_chance_loss``, ITM's) as a dashed line on its panel.

    Args:
        history: series name -> [(step, value), ...].
        path: where to write the PNG.
        title: figure title (the recipe name).
    """
    plt = pyplot()
    names = [
        n
        for n, pts in history.items()
        if pts and n.endswith("loss") and "/" not in n and not n.endswith("_chance_loss")
    ]
    cols = min(3, max(1, len(names)))
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        steps, values = zip(*history[name], strict=True)
        ax.plot(steps, values, lw=1.2, label="train")
        held = history.get(f"eval/{name}", [])
        if held:
            ax.plot(*zip(*held, strict=True), "o", color="C3", label="held-out")
        chance = history.get(name.removesuffix("loss") + "chance_loss", [])
        if chance:
            ax.plot(*zip(*chance, strict=True), "--", color="0.5", lw=1, label="chance")
        if held or chance:
            ax.legend(fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
