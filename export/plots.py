"""Pictures of a model, with matplotlib (the optional `plots` extra; mindref itself never needs it).

    explain_figure   one user's routing weights w_ij (Eq. 5) as a heatmap, behaviours against
                     interests, each interest's retrieved items beside its row (`explain --plot`):
                     the picture the paper's interest visualisation stands for
    curve_figure     a training run's loss and validation metrics per epoch (`mindref plot RUN`),
                     the best epoch of early stopping marked
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend; OSError with the install line without it."""
    try:
        import matplotlib
    except ImportError:
        raise OSError("pictures need matplotlib: pip install 'mindref[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def png_path(path, flag: str) -> Path:
    """Where a figure goes: a file name ending in .png, not a folder (matplotlib would otherwise
    append .png to the name, or take the format from another suffix, and the file said to be
    written would not be the one written)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path}: is a folder; give a file name ending in .png")
    if path.suffix.lower() != ".png":
        raise ValueError(f"{flag} {path}: give a file name ending in .png")
    return path


def _save(plt, fig, path: Path, dpi: int) -> Path:
    """The figure as a PNG, written under a temporary name and renamed: a file under its own name
    is always a complete picture."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def explain_figure(x, path: Path, items: int = 5) -> Path:
    """The routing weights of an Explanation (export/serve.py) as a heatmap [K'_u, behaviours],
    behaviours sorted by the interest that owns them, with each interest's top retrieved items."""
    plt = pyplot()
    order = np.lexsort((-x.weights.max(0), x.owner))  # grouped by owner, strongest first
    w = x.weights[:, order]  # [K'_u, n_u]
    K_u, n_u = w.shape
    fig, (ax, side) = plt.subplots(1, 2, figsize=(4 + 0.3 * n_u + 5, 1.2 + 0.8 * K_u),
                                   gridspec_kw={"width_ratios": [max(n_u, 2), 12]})
    image = ax.imshow(w, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(K_u), [f"interest {k}" for k in range(K_u)])
    ax.set_xticks(range(n_u), [_short(x.behaviours[i]) for i in order], rotation=70, ha="right", fontsize=7)
    ax.set_title(f"routing weights w_ij (Eq. 5): {n_u} behaviours -> K'u = {K_u} of {x.K}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    side.axis("off")
    side.set_ylim(K_u - 0.5, -0.5)
    for k in range(K_u):
        found = x.retrieved[k][:items] or [(0, 0.0, "(wins none of the top items)")]
        text = "\n".join(f"#{rank} {score:.2f} {_short(label, 40)}" if rank else label
                         for rank, score, label in found)
        side.text(0, k, text, va="center", fontsize=7, family="monospace")
    side.set_title("retrieved items each interest won (rank, Eq. 3 score)", fontsize=9)
    fig.tight_layout()
    return _save(plt, fig, png_path(path, "the picture"), 120)


def _short(label: str, width: int = 24) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


CURVE_METRICS = ("HR@10", "HR@50", "NDCG@50")


def curve_figure(curve: list, path: Path, title: str, best: dict | None = None) -> Path:
    """Training loss (left) and validation metrics (right) per epoch of a run's curve, as
    mindref train records it ({"epoch", "loss", "valid": {metric: value}} per epoch)."""
    plt = pyplot()
    epochs = [p["epoch"] for p in curve]
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    left.plot(epochs, [p["loss"] for p in curve], marker="o", color="black")
    left.set(xlabel="epoch", ylabel="training loss (sampled softmax, mean)", title="loss")
    shown = [m for m in (*CURVE_METRICS, *([best["metric"]] if best else [])) if all(
        m in p.get("valid", {}) for p in curve)]
    for m in dict.fromkeys(shown):
        right.plot(epochs, [p["valid"][m] for p in curve], marker="o", label=m)
    right.set(xlabel="epoch", ylabel="validation (full ranking)", title="validation")
    if shown:
        right.legend()
    if best:
        for ax in (left, right):
            ax.axvline(best["epoch"], color="grey", linestyle="--", linewidth=1)
        right.annotate(f"best: epoch {best['epoch']}", (best["epoch"], best["value"]),
                       textcoords="offset points", xytext=(4, -12), fontsize=8, color="grey")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    fig.suptitle(title)
    return _save(plt, fig, png_path(path, "the picture"), 110)
