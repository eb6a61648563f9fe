"""Matplotlib figures, drawn with the Agg backend (no display, no pyplot state): a run's test samples and
confusion matrix for TensorBoard, and the curves and bars of a sweep report."""
from __future__ import annotations

import io

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torchvision.datasets import FashionMNIST

CLASSES: list[str] = FashionMNIST.classes
SIZE = 28


def to_rgb(fig: Figure) -> np.ndarray:
    """Render `fig` into an (H, W, 3) uint8 array."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def to_png(fig: Figure) -> bytes:
    """Render `fig` as PNG bytes."""
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def samples(images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor, columns: int = 8, rows: int = 3) -> Figure:
    """The first columns x rows uint8 images, each captioned with its predicted and true class (red when wrong)."""
    n = min(len(images), columns * rows)
    caption = 16  # pixel rows of text space above each image
    cell_h, cell_w = SIZE + caption, SIZE + 2
    montage = np.full((rows * cell_h, columns * cell_w), 255, dtype=np.uint8)
    width = columns * 1.3  # inches; the height keeps the montage's aspect below a title band
    fig = Figure(figsize=(width, width * montage.shape[0] / montage.shape[1] / 0.92))
    ax = fig.add_axes((0, 0, 1, 0.92))
    for k in range(n):
        r, c = divmod(k, columns)
        top, left = r * cell_h + caption, c * cell_w + 1
        montage[top : top + SIZE, left : left + SIZE] = images[k].cpu().numpy()
        p, t = int(predicted[k]), int(labels[k])
        ax.text(left + SIZE / 2, top - 1, f"{CLASSES[p]}\n({CLASSES[t]})", ha="center", va="bottom", fontsize=7,
                color="black" if p == t else "red")
    ax.imshow(montage, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle("test images: predicted (true), red when wrong", fontsize=9)
    return fig


def confusion(matrix: torch.Tensor, title: str) -> Figure:
    """A 10 x 10 confusion matrix of counts, true class by row, predicted class by column."""
    counts = matrix.cpu().numpy()
    fig = Figure(figsize=(6.4, 6))
    ax = fig.add_axes((0.2, 0.2, 0.75, 0.72))
    ax.imshow(counts, cmap="Blues")
    threshold = counts.max() / 2
    for (i, j), value in np.ndenumerate(counts):
        if value:  # empty cells stay blank
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                    color="white" if value > threshold else "black")
    ticks = range(len(CLASSES))
    ax.set_xticks(ticks, CLASSES, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, CLASSES, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    return fig


def sweep(curves: dict[str, list[tuple[list[float], list[float]]]], bars: dict[str, tuple[float, float, int]]) -> Figure:
    """Left: valid accuracy per epoch of every job, one colour per setting. Right: test accuracy
    mean ± std per setting (`bars`: setting -> (mean, std, count) over its completed jobs)."""
    settings = list(dict.fromkeys([*curves, *bars]))
    color = {s: colormaps["tab10"](i % 10) for i, s in enumerate(settings)}
    fig = Figure(figsize=(13, max(4.5, 0.45 * len(settings) + 2)), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    for setting, jobs in curves.items():
        for k, (epochs, accs) in enumerate(jobs):
            left.plot(epochs, [100 * a for a in accs], marker="o", markersize=3, color=color[setting],
                      label=setting if k == 0 else None)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("epoch")
    left.set_ylabel("valid accuracy (%)")
    left.set_title("valid accuracy per epoch, every job")
    left.grid(alpha=0.3)
    if curves:
        left.legend(fontsize=8)
    names = [s for s in settings if s in bars]
    means = [100 * bars[s][0] for s in names]
    stds = [100 * bars[s][1] for s in names]
    y = np.arange(len(names))
    right.barh(y, means, xerr=stds, capsize=4, color=[color[s] for s in names])
    for k, (m, sd) in enumerate(zip(means, stds)):
        right.annotate(f"{m:.2f} ± {sd:.2f}", (m + sd, k), xytext=(4, 0), textcoords="offset points", va="center",
                       fontsize=8)
    right.set_yticks(y, [f"{s}  (n={bars[s][2]})" for s in names], fontsize=8)
    right.invert_yaxis()
    if means:
        low = min(m - s for m, s in zip(means, stds))
        high = max(m + s for m, s in zip(means, stds))
        right.set_xlim(max(0.0, low - 2), high + 0.3 * (high - max(0.0, low - 2)))  # room for the labels
    right.set_xlabel("test accuracy (%), mean ± std over seeds")
    right.set_title("test accuracy per setting")
    right.grid(axis="x", alpha=0.3)
    return fig
