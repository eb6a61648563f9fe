"""Matplotlib figures, drawn with the Agg backend (no display, no pyplot state): a run's test samples and
confusion matrix for TensorBoard, and the curves and test-accuracy points of a sweep report."""
from __future__ import annotations

import io

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fmsweep.data import CLASSES
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


def epoch_ticks(last: int) -> list[int]:
    """Integer epochs from 1 to `last` for the x axis: every one for short runs, MaxNLocator's steps for long
    ones (on its own, MaxNLocator(integer=True) draws fractions for 1 epoch and epoch 0 for long runs)."""
    return sorted({int(t) for t in MaxNLocator(integer=True).tick_values(1, last) if 1 <= t <= last})


def sweep(curves: dict[str, list[tuple[list[float], list[float]]]], points: dict[str, tuple[float, float, int]],
          shared: list[str]) -> Figure:
    """Left: valid accuracy per epoch of every job, one colour per setting. Right: test accuracy per setting
    (`points`: setting -> (mean, std, count) over its completed jobs) as its mean with a ± std error bar, none
    for a single job: points, not bars, so the axis can zoom in on them without exaggerating differences.
    Settings are labelled without the overrides `shared` by every job; the title states those once."""
    settings = list(dict.fromkeys([*curves, *points]))
    color = {s: colormaps["tab10"](i % 10) for i, s in enumerate(settings)}
    fig = Figure(figsize=(13, max(4.5, 0.45 * len(settings) + 2)), layout="constrained")
    if shared:
        fig.suptitle(f"every job: {','.join(shared)}")
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    for setting, jobs in curves.items():
        for k, (epochs, accs) in enumerate(jobs):
            left.plot(epochs, [100 * a for a in accs], marker="o", markersize=3, color=color[setting],
                      label=setting if k == 0 else None)
    if curves:
        left.set_xticks(epoch_ticks(int(max(max(epochs) for jobs in curves.values() for epochs, _ in jobs))))
        left.legend(fontsize=8)
    left.set_xlabel("epoch")
    left.set_ylabel("valid accuracy (%)")
    left.set_title("valid accuracy per epoch, every job")
    left.grid(alpha=0.3)
    names = [s for s in settings if s in points]
    for k, setting in enumerate(names):
        mean, std, n = 100 * points[setting][0], 100 * points[setting][1], points[setting][2]
        right.errorbar(mean, k, xerr=std if n > 1 else None, fmt="o", capsize=4, color=color[setting])
        right.annotate(f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}", (mean, k), xytext=(0, 6),
                       textcoords="offset points", ha="center", va="bottom", fontsize=8)
    right.set_yticks(range(len(names)), [f"{s}  (n={points[s][2]})" for s in names], fontsize=8)
    if names:
        right.set_ylim(len(names) - 0.5, -0.5)  # first setting on top
        low = min(100 * (points[s][0] - points[s][1]) for s in names)
        high = max(100 * (points[s][0] + points[s][1]) for s in names)
        pad = max(0.1 * (high - low), 0.5)
        right.set_xlim(low - pad, high + pad)
    right.set_xlabel("test accuracy (%), mean ± std over seeds")
    right.set_title("test accuracy per setting")
    right.grid(axis="x", alpha=0.3)
    return fig


def search(objective: str, trials: list[tuple[int, str, float | None, dict[str, float]]], log_scale: set[str],
           minimize: bool) -> Figure:
    """A search's trials (number, state, objective value or None, searched values): the objective against each
    searched parameter (completed trials as dots, pruned ones as crosses at their last reported value), and the
    best value so far against the trial number. A loss (minimized) is drawn on a log scale: a diverging trial's
    loss would squash the others."""
    names = list(dict.fromkeys(name for *_, params in trials for name in params))
    fig = Figure(figsize=(4.5 * (len(names) + 1), 4), layout="constrained")
    axes = fig.subplots(1, len(names) + 1, squeeze=False)[0]
    for ax, name in zip(axes, names):
        for state, marker in (("complete", "o"), ("pruned", "x")):
            points = [(params[name], value) for _, s, value, params in trials if s == state and value is not None]
            if points:
                ax.scatter(*zip(*points), marker=marker, label=state, alpha=0.8)
        ax.set_xscale("log" if name in log_scale else "linear")
        ax.set_yscale("log" if minimize else "linear")
        ax.set_xlabel(name)
        ax.set_ylabel(objective)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    best, numbers, values = None, [], []
    for number, state, value, _ in sorted(trials):
        if state == "complete" and value is not None and (best is None or (value < best if minimize else value > best)):
            best = value
        if best is not None:
            numbers.append(number)
            values.append(best)
    axes[-1].step(numbers, values, where="post")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("trial")
    axes[-1].set_ylabel(f"best {objective} so far")
    axes[-1].grid(alpha=0.3)
    return fig
