"""Matplotlib figures, drawn with the Agg backend (no display, no pyplot state): a run's test samples and
confusion matrix (TensorBoard, and files in its run dir), and a sweep report's curves, settings ranked on validation
and heatmap. Accuracies are drawn in percent."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from fmsweep.classes import CLASSES

if TYPE_CHECKING:
    from matplotlib.typing import LineStyleType

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


def samples(
    images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor, columns: int = 8, rows: int = 3
) -> Figure:
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
        ax.text(
            left + SIZE / 2,
            top - 1,
            f"{CLASSES[p]}\n({CLASSES[t]})",
            ha="center",
            va="bottom",
            fontsize=7,
            color="black" if p == t else "red",
        )
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
            ax.text(
                j, i, str(value), ha="center", va="center", fontsize=7, color="white" if value > threshold else "black"
            )
    ticks = range(len(CLASSES))
    ax.set_xticks(ticks, CLASSES, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, CLASSES, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    return fig


def percent(key: str) -> float:
    """The factor a metric is drawn with: 100 for an accuracy (a fraction in the files), else 1."""
    return 100.0 if key.endswith("acc") else 1.0


def axis_label(key: str) -> str:
    """A metric as an axis names it: `valid loss`, `valid acc (%)`."""
    return key.replace("_", " ") + (" (%)" if key.endswith("acc") else "")


def epoch_ticks(last: int) -> list[int]:
    """Integer epochs from 1 to `last` for the x axis: every one for short runs, MaxNLocator's steps for long
    ones (on its own, MaxNLocator(integer=True) draws fractions for 1 epoch and epoch 0 for long runs)."""
    return sorted({int(t) for t in MaxNLocator(integer=True).tick_values(1, last) if 1 <= t <= last})


LEGEND_SETTINGS = 12  # beyond this many settings the curves' legend names the best ones and counts the rest
LINESTYLES: tuple[LineStyleType, ...] = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<")


def setting_colors(count: int) -> list[tuple[float, float, float, float]]:
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


def sweep(
    order: list[str],
    curves: Mapping[str, Sequence[tuple[str, Sequence[float], Sequence[float]]]],
    points: dict[str, tuple[float, float, int]],
    objective: str,
    minimize: bool,
    shared: list[str],
) -> Figure:
    """A sweep's settings, `order`ed best first (by their mean valid objective). Left: the objective per epoch of
    every job (`curves`: setting -> (seed, epochs, values) per job), one colour per setting, the seeds of a
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
    last_epoch, factor, what = 1, percent(objective), objective.replace("_", " ")
    for setting in order:
        for seed, epochs, values in curves.get(setting, []):
            linestyle, marker = style[seed]
            left.plot(
                epochs,
                [factor * v for v in values],
                linestyle=linestyle,
                marker=marker,
                markersize=3,
                linewidth=1,
                color=color[setting],
            )
            last_epoch = max(last_epoch, int(max(epochs)))
    left.set_xticks(epoch_ticks(last_epoch))
    left.set_xlabel("epoch")
    left.set_ylabel(axis_label(objective))
    left.set_title(f"{what} per epoch, every job", fontsize=10)
    left.grid(alpha=0.3)
    named = order[:LEGEND_SETTINGS]
    handles = [Line2D([], [], color=color[s], linewidth=2) for s in named]
    labels = [f"{k + 1}. {shorten(s, 40)}" for k, s in enumerate(named)]
    if len(order) > len(named):
        handles.append(Line2D([], [], linestyle="none"))
        labels.append(f"… {len(order) - len(named)} more, coloured by rank")
    if len(seeds) > 1:
        handles += [
            Line2D([], [], color="black", linestyle=style[s][0], marker=style[s][1], markersize=3) for s in seeds
        ]
        labels += [f"seed {s}" for s in seeds]
    left.legend(
        handles,
        labels,
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        borderaxespad=0,
        title="settings, best first" + (" · seeds" if len(seeds) > 1 else ""),
        title_fontsize=7,
    )

    ranked = [s for s in order if s in points]
    repeated = any(points[s][2] > 1 for s in ranked)
    size = 8 if rows <= 20 else 6
    for k, setting in enumerate(ranked):
        mean, std, n = (factor * points[setting][0], factor * points[setting][1], points[setting][2])
        right.errorbar(
            mean,
            k,
            xerr=std if n > 1 else None,
            fmt="*" if k == 0 else "o",
            markersize=9 if k == 0 else 5,
            capsize=3,
            color=color[setting],
        )
    right.set_yticks(
        range(len(ranked)),
        [
            f"{'best: ' if k == 0 and len(ranked) > 1 else ''}{shorten(s)}  (n={points[s][2]})"
            for k, s in enumerate(ranked)
        ],
        fontsize=size,
    )
    if ranked:
        right.set_ylim(len(ranked) - 0.5, -0.5)  # the best on top
        low = factor * min(points[s][0] - points[s][1] for s in ranked)
        high = factor * max(points[s][0] + points[s][1] for s in ranked)
        pad = max(0.1 * (high - low), 1e-3)
        right.set_xlim(low - pad, high + pad)
    right.set_xlabel(
        f"{axis_label(objective)}, "
        + ("mean ± std over seeds" if repeated else "one job each")
        + f" ({'lower' if minimize else 'higher'} is better)"
    )
    right.set_title(f"settings ranked by {what}", fontsize=10)
    right.grid(axis="x", alpha=0.3)
    return fig


def heatmap(
    keys: list[str],
    values: list[list[str]],
    means: list[list[float | None]],
    best: tuple[int, int] | None,
    objective: str,
    minimize: bool,
) -> Figure:
    """A grid over two keys: the mean `objective` of each combination (`means[row][column]`, None where no job
    completed) for the values of keys[0] (rows) and keys[1] (columns), printed in its cell, the `best` cell framed.
    Brighter is better, whichever way the objective goes."""
    factor = percent(objective)
    grid = np.array([[np.nan if v is None else factor * v for v in row] for row in means])
    rows, columns = grid.shape
    fig = Figure(figsize=(max(5.0, 2.5 + 1.1 * columns), max(3.5, 1.8 + 0.55 * rows)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis_r" if minimize else "viridis", aspect="auto")
    low, high = image.get_clim()
    for (i, j), value in np.ndenumerate(grid):
        shade = 0.5 if high == low or np.isnan(value) else (value - low) / (high - low)
        text = "–" if np.isnan(value) else f"{value:.2f}" if factor != 1 else f"{value:.4f}"
        ax.text(
            j,
            i,
            text,
            ha="center",
            va="center",
            fontsize=9,
            fontweight="bold" if (i, j) == best else "normal",
            color="black" if (shade > 0.5) != minimize else "white",
        )
    if best is not None:
        ax.add_patch(Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3))
    ax.set_xticks(range(columns), values[1], fontsize=8)
    ax.set_yticks(range(rows), values[0], fontsize=8)
    ax.set_xlabel(keys[1])
    ax.set_ylabel(keys[0])
    what = objective.replace("_", " ")
    ax.set_title(f"mean {what} over seeds ({'lower' if minimize else 'higher'} is better), best framed", fontsize=10)
    fig.colorbar(image, ax=ax, label=axis_label(objective))
    return fig


def search(
    objective: str, trials: list[tuple[int, str, float | None, dict[str, float]]], log_scale: set[str], minimize: bool
) -> Figure:
    """A search's trials (number, state, objective value or None, searched values): the objective against each
    searched parameter (completed trials as dots, pruned ones as crosses at their last reported value), and the
    best value so far against the trial number. A loss (minimized) is drawn on a log scale: a diverging trial's
    loss would squash the others; an accuracy in percent."""
    factor = percent(objective)
    names = list(dict.fromkeys(name for *_, params in trials for name in params))
    fig = Figure(figsize=(4.5 * (len(names) + 1), 4), layout="constrained")
    axes = fig.subplots(1, len(names) + 1, squeeze=False)[0]
    for ax, name in zip(axes, names):
        for state, marker in (("complete", "o"), ("pruned", "x")):
            points = [
                (params[name], factor * value) for _, s, value, params in trials if s == state and value is not None
            ]
            if points:
                ax.scatter(*zip(*points), marker=marker, label=state, alpha=0.8)
        ax.set_xscale("log" if name in log_scale else "linear")
        ax.set_yscale("log" if minimize else "linear")
        ax.set_xlabel(name)
        ax.set_ylabel(axis_label(objective))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    best, numbers, values = None, [], []
    for number, state, value, _ in sorted(trials):
        if state == "complete" and value is not None and (best is None or (value < best if minimize else value > best)):
            best = value
        if best is not None:
            numbers.append(number)
            values.append(factor * best)
    axes[-1].step(numbers, values, where="post")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("trial")
    axes[-1].set_ylabel(f"best {axis_label(objective)} so far")
    axes[-1].grid(alpha=0.3)
    return fig
