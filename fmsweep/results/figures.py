"""Matplotlib figures, drawn with the Agg backend (no display, no pyplot state): a run's test samples and
confusion matrix for TensorBoard, and a sweep report's curves and settings ranked on validation."""
from __future__ import annotations

import io

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from fmsweep import CLASSES
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


LEGEND_SETTINGS = 12  # beyond this many settings the curves' legend names the best ones and counts the rest
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<")


def setting_colors(count: int) -> list[tuple[float, ...]]:
    """`count` distinct colours, in rank order: tab10 / tab20 for up to 10 / 20, else evenly spaced along a
    perceptually ordered colormap (the best settings darkest)."""
    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["viridis"](0.92 * i / (count - 1)) for i in range(count)]


def shorten(text: str, width: int = 60) -> str:
    """`text`, cut to `width` characters with an ellipsis (the report's table holds the whole setting)."""
    return text if len(text) <= width else text[: width - 1] + "…"


def sweep(order: list[str], curves: dict[str, list[tuple[str, list[float], list[float]]]],
          points: dict[str, tuple[float, float, int]], objective: str, minimize: bool, shared: list[str]) -> Figure:
    """A sweep's settings, `order`ed best first (by their mean valid objective). Left: valid accuracy per epoch of
    every job (`curves`: setting -> (seed, epochs, accuracies) per job), one colour per setting, the seeds of a
    setting told apart by line style and marker. Right: each setting's objective (`points`: setting -> (mean, std,
    n) over its completed jobs) as its mean with a ± std bar where seeds repeat it, best on top and marked.
    Validation only: the test split is no ground for choosing. Settings are labelled without the overrides `shared`
    by every job; the title states those once. Readable from 1 to 50 settings and 1 to 10 seeds per setting: the
    figure grows with the settings, legends sit outside the plots, and beyond LEGEND_SETTINGS settings the curves'
    legend names the best ones and counts the rest."""
    color = dict(zip(order, setting_colors(len(order))))
    rows = len(order)
    fig = Figure(figsize=(14, max(4.8, 1.9 + 0.22 * rows)), layout="constrained")
    fig.suptitle(f"every job: {shorten(','.join(shared), 150)}" if shared else "sweep", fontsize=10)
    left, right = fig.subplots(1, 2, width_ratios=(1, 1))
    seeds = sorted({seed for jobs in curves.values() for seed, *_ in jobs}, key=lambda s: (len(s), s))
    style = {seed: (LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)]) for i, seed in enumerate(seeds)}
    last_epoch = 1
    for setting in order:
        for seed, epochs, accs in curves.get(setting, []):
            linestyle, marker = style[seed]
            left.plot(epochs, [100 * a for a in accs], linestyle=linestyle, marker=marker, markersize=3, linewidth=1,
                      color=color[setting])
            last_epoch = max(last_epoch, int(max(epochs)))
    left.set_xticks(epoch_ticks(last_epoch))
    left.set_xlabel("epoch")
    left.set_ylabel("valid accuracy (%)")
    left.set_title("valid accuracy per epoch, every job", fontsize=10)
    left.grid(alpha=0.3)
    named = order[:LEGEND_SETTINGS]
    handles = [Line2D([], [], color=color[s], linewidth=2) for s in named]
    labels = [f"{k + 1}. {shorten(s, 40)}" for k, s in enumerate(named)]
    if len(order) > len(named):
        handles.append(Line2D([], [], linestyle="none"))
        labels.append(f"… {len(order) - len(named)} more, coloured by rank")
    if len(seeds) > 1:
        handles += [Line2D([], [], color="black", linestyle=style[s][0], marker=style[s][1], markersize=3)
                    for s in seeds]
        labels += [f"seed {s}" for s in seeds]
    left.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0,
                title="settings, best first" + (" · seeds" if len(seeds) > 1 else ""), title_fontsize=7)

    ranked = [s for s in order if s in points]
    repeated = any(points[s][2] > 1 for s in ranked)
    size = 8 if rows <= 20 else 6
    for k, setting in enumerate(ranked):
        mean, std, n = points[setting]
        right.errorbar(mean, k, xerr=std if n > 1 else None, fmt="*" if k == 0 else "o", markersize=9 if k == 0 else 5,
                       capsize=3, color=color[setting])
    right.set_yticks(range(len(ranked)),
                     [f"{'best: ' if k == 0 and len(ranked) > 1 else ''}{shorten(s)}  (n={points[s][2]})"
                      for k, s in enumerate(ranked)],
                     fontsize=size)
    if ranked:
        right.set_ylim(len(ranked) - 0.5, -0.5)  # the best on top
        low = min(points[s][0] - points[s][1] for s in ranked)
        high = max(points[s][0] + points[s][1] for s in ranked)
        pad = max(0.1 * (high - low), 1e-3)
        right.set_xlim(low - pad, high + pad)
    what = objective.replace("_", " ")
    right.set_xlabel(f"{what}, " + ("mean ± std over seeds" if repeated else "one job each")
                     + f" ({'lower' if minimize else 'higher'} is better)")
    right.set_title(f"settings ranked by {what}", fontsize=10)
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
