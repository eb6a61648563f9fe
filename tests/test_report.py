"""`python -m fmsweep.results.report` on the tiny sweep: settings ranked on validation with seeds aggregated, the best
marked, job table, CSVs, plot, statuses; the plot from 1 to 50 settings."""

import csv
import io
import json
import math
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import matplotlib.image
import numpy as np
import pytest
from conftest import ROOT
from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from omegaconf import DictConfig, OmegaConf

from fmsweep.results import figures, report
from fmsweep.results.runs import Run, find_runs, read_overrides
from fmsweep.sweep import summary as sweep_status
from fmsweep.tracking import hparams


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0]))


def table_rows(markdown: str, section: str) -> list[list[str]]:
    """The body rows of the markdown table under `## section`, as stripped cells."""
    block = markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


@pytest.fixture
def sweep_copy(tiny_sweep: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_sweep, tmp_path / "sweep"))


def test_report_of_a_finished_sweep(sweep_copy: Path, capsys: pytest.CaptureFixture) -> None:
    report.main([str(sweep_copy)])
    printed = capsys.readouterr().out
    # the markdown, then where each file went, worded as python -m fmsweep.results.ensemble says it
    assert printed == (sweep_copy / "report.md").read_text() + "\n" + "".join(
        f"Wrote {sweep_copy / name}\n"
        for name in ("report.md", "report.csv", "jobs.csv", "report.png", "best_samples.png", "best_confusion.png")
    )
    assert not (sweep_copy / "heatmap.png").exists()  # one swept key besides the seed: no grid to map
    metrics = [json.loads((d / "metrics.json").read_text()) for d in job_dirs(sweep_copy)]
    assert "Every job: batch_size=64,epochs=2\n" in printed and printed.count("batch_size=64") == 1  # said once

    jobs = table_rows(printed, "Jobs")
    assert [row[0] for row in jobs] == ["0", "1", "2", "3"]
    for row, m, (model, seed) in zip(jobs, metrics, [("linear", 0), ("linear", 1), ("fc", 0), ("fc", 1)]):
        assert row[1] == f"model={model},seed={seed}"
        assert row[2] == "completed" and row[3] == str(m["best_epoch"])
        assert row[4:8] == [
            f"{m['valid_loss']:.4f}",
            f"{100 * m['valid_acc']:.2f}",
            f"{m['test_loss']:.4f}",
            f"{100 * m['test_acc']:.2f}",
        ]
        assert row[8] == str(m["num_params"])

    # ranked by mean valid loss, never by test accuracy; the best marked, with its margin over the next
    groups = {"model=linear": metrics[:2], "model=fc": metrics[2:]}
    mean_loss = {name: statistics.mean(m["valid_loss"] for m in group) for name, group in groups.items()}
    order = sorted(groups, key=mean_loss.__getitem__)
    settings = table_rows(printed, "Settings")
    assert [row[:2] for row in settings] == [["1 (best)", order[0]], ["2", order[1]]]
    for row, name in zip(settings, order):
        accs = [100 * m["test_acc"] for m in groups[name]]
        losses = [m["valid_loss"] for m in groups[name]]
        assert row[2] == "2"
        assert row[3] == f"{statistics.mean(losses):.4f} ± {statistics.stdev(losses):.4f}"
        assert row[6] == f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}"
    stds = {name: statistics.stdev(m["valid_loss"] for m in group) for name, group in groups.items()}
    gap = mean_loss[order[1]] - mean_loss[order[0]]
    error = math.sqrt(stds[order[0]] ** 2 / 2 + stds[order[1]] ** 2 / 2)
    assert (
        f"**Best setting on validation: {order[0]}, mean valid loss {mean_loss[order[0]]:.4f} over 2 jobs, ahead "
        f"of the next by {gap:.4f} ({gap / error:.1f} standard errors).**"
    ) in printed

    with open(sweep_copy / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["rank"], r["model"], r["n"]) for r in rows] == [("1", order[0][6:], "2"), ("2", order[1][6:], "2")]
    for r, name in zip(rows, order):
        accs = [m["test_acc"] for m in groups[name]]
        assert (float(r["test_acc_mean"]), float(r["test_acc_std"])) == pytest.approx(
            (statistics.mean(accs), statistics.stdev(accs))
        )
    with open(sweep_copy / "jobs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["model"], r["seed"]) for r in rows] == [
        ("0", "linear", "0"),
        ("1", "linear", "1"),
        ("2", "fc", "0"),
        ("3", "fc", "1"),
    ]
    assert [float(r["test_acc"]) for r in rows] == [m["test_acc"] for m in metrics]

    png = matplotlib.image.imread(sweep_copy / "report.png")
    assert png.ndim == 3 and png.shape[0] > 300 and png.shape[1] > 800
    assert png.std() > 0.05  # something is drawn
    assert "![valid loss per epoch of every job; the settings ranked by their mean valid loss](report.png)" in printed


def test_failed_and_unfinished_jobs_appear_with_their_status(sweep_copy: Path, capsys: pytest.CaptureFixture) -> None:
    dirs = job_dirs(sweep_copy)
    (dirs[1] / "metrics.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom"}))
    (dirs[3] / "metrics.json").unlink()
    history = (dirs[3] / "history.csv").read_text().splitlines()
    (dirs[3] / "history.csv").write_text("\n".join(history[:2]) + "\n")  # header and epoch 1

    markdown, _, _ = report.write_report(sweep_copy)
    jobs = table_rows(markdown, "Jobs")
    assert [row[2] for row in jobs] == ["completed", "failed", "completed", "unfinished (1/2 epochs)"]
    assert jobs[1][4:] == ["–"] * 6
    assert "4 jobs: 2 completed, 1 failed, 1 unfinished (1/2 epochs)" in markdown
    settings = {row[1]: row for row in table_rows(markdown, "Settings")}
    assert [row[2] for row in settings.values()] == ["1 of 2", "1 of 2"]
    m0 = json.loads((dirs[0] / "metrics.json").read_text())
    assert settings["model=linear"][3:7] == [
        f"{m0['valid_loss']:.4f}",
        f"{100 * m0['valid_acc']:.2f}",
        f"{m0['test_loss']:.4f}",
        f"{100 * m0['test_acc']:.2f}",
    ]  # one job: no spread
    assert "standard errors" not in markdown  # no spread to measure the margin in

    rows = list(csv.DictReader(io.StringIO((sweep_copy / "jobs.csv").read_text())))
    assert [r["status"] for r in rows] == ["completed", "failed", "completed", "unfinished (1/2 epochs)"]
    assert rows[1]["test_acc"] == ""


def test_a_folder_without_runs_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fmsweep.results.report", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fmsweep: error: ") and str(tmp_path) in lines[0]
    assert not (tmp_path / "report.md").exists()


def test_read_overrides_orders_and_leaves_out_as_hydras_job_dir_name(tmp_path: Path) -> None:
    """Hydra's own override_dirname is the reference: the same overrides, excluded keys and order."""
    given = [
        "seed=1",
        "~aug",
        "model@net=fc",
        "++epochs=3",
        "+reg.l2=1e-3",
        "data.root=/data",
        "Batch_size=64",
        "optimizer=sgd",
        "device=cpu",
    ]
    exclude = ["data.root", "device", "model"]
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(given), tmp_path / ".hydra" / "overrides.yaml")
    OmegaConf.save(
        OmegaConf.create({"hydra": {"job": {"config": {"override_dirname": {"exclude_keys": exclude}}}}}),
        tmp_path / ".hydra" / "hydra.yaml",
    )
    dirname = get_overrides_dirname(OverridesParser.create().parse_overrides(given), exclude, ",", "=")
    assert ",".join(read_overrides(tmp_path)) == dirname


def test_overrides_given_out_of_order_are_listed_in_job_dir_order(sweep_copy: Path) -> None:
    """Hydra records a job's overrides in command-line order but sorts them for its dir name: the report, its
    CSV and TensorBoard's hparams list them as the dir name does."""
    dirs = job_dirs(sweep_copy)
    for d in dirs:  # as Hydra records `... seed=0 model=linear epochs=2 batch_size=64 device=cpu ...`
        recorded = OmegaConf.load(d / ".hydra" / "overrides.yaml")
        OmegaConf.save(OmegaConf.create(list(reversed(list(recorded)))), d / ".hydra" / "overrides.yaml")
    names = [d.name.partition("_")[2] for d in dirs]
    assert names[0] == "batch_size=64,epochs=2,model=linear,seed=0"

    markdown, _, _ = report.write_report(sweep_copy)
    assert [row[1] for row in table_rows(markdown, "Jobs")] == [
        name.removeprefix("batch_size=64,epochs=2,") for name in names
    ]
    assert {row[1] for row in table_rows(markdown, "Settings")} == {"model=linear", "model=fc"}
    assert [r["overrides"] for r in csv.DictReader(io.StringIO((sweep_copy / "jobs.csv").read_text()))] == names
    logged = [
        hparams(cast(DictConfig, OmegaConf.load(d / ".hydra" / "config.yaml")), read_overrides(d))["overrides"]
        for d in dirs
    ]
    assert logged == names  # what train.run logs as TensorBoard's `overrides` hparam


def test_figure_labels_name_what_a_setting_adds_to_the_shared_overrides() -> None:
    def run(*overrides: str) -> Run:
        return Run(Path("."), ".", 0, list(overrides), OmegaConf.create(), {}, {})

    base, l2 = run("model=fc", "seed=0"), run("model=fc", "reg.l2=1e-3", "seed=1")
    assert report.shared_overrides([base, l2]) == ["model=fc"]
    assert [report.label(r, ["model=fc"]) for r in (base, l2)] == ["(shared overrides only)", "reg.l2=1e-3"]
    defaults, seeded = run(), run("seed=1")
    assert report.shared_overrides([defaults, seeded]) == []
    assert [report.label(r, []) for r in (defaults, seeded)] == ["(defaults)", "(defaults)"]


def drawn_xticks(ax) -> list[str]:
    """The x tick labels inside the view limits (the locator's others are not drawn)."""
    low, high = sorted(ax.get_xlim())
    return [label.get_text() for x, label in zip(ax.get_xticks(), ax.get_xticklabels()) if low <= x <= high]


@pytest.mark.parametrize("epochs", [1, 2, 3, 50])
def test_epoch_ticks_are_whole_epochs_of_the_runs(epochs: int) -> None:
    curves = {"model=fc": [("0", list(range(1, epochs + 1)), [0.5] * epochs)]}
    fig = figures.sweep(["model=fc"], curves, {"model=fc": (0.5, 0.0, 1)}, "valid_loss", True, [])
    FigureCanvasAgg(fig).draw()
    ticks = drawn_xticks(fig.axes[0])
    if epochs <= 3:
        assert ticks == [str(e) for e in range(1, epochs + 1)]
    else:
        assert len(ticks) >= 4 and all(t.isdigit() and 1 <= int(t) <= epochs for t in ticks)


def test_report_figure_ranks_settings_on_validation(sweep_copy: Path) -> None:
    dirs = job_dirs(sweep_copy)
    (dirs[1] / "metrics.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom"}))
    runs = find_runs(sweep_copy)
    stats = report.setting_stats(runs)
    order = report.ranked(stats, "valid_loss", True)
    fig = report.figure(runs, stats, order, "valid_loss", True)
    FigureCanvasAgg(fig).draw()
    curves, right = fig.axes
    assert drawn_xticks(curves) == ["1", "2"]
    # the curves show what ranks the settings: each job's valid loss per epoch
    assert curves.get_ylabel() == "valid loss" and curves.get_title() == "valid loss per epoch, every job"
    drawn = [np.asarray(line.get_ydata()).tolist() for line in curves.get_lines()]
    for run in runs:
        assert [row["valid_loss"] for row in run.history()] in drawn

    # the overrides every job shares are stated once, in the title; labels name only what differs
    assert fig.get_suptitle() == "every job: batch_size=64,epochs=2"
    assert sum(t.get_text().count("batch_size=64") for t in fig.findobj(Text)) == 1
    linear = json.loads((dirs[0] / "metrics.json").read_text())["valid_loss"]
    fc = [json.loads((d / "metrics.json").read_text())["valid_loss"] for d in dirs[2:]]
    names = sorted(["model=linear", "model=fc"], key=lambda n: linear if n == "model=linear" else statistics.mean(fc))
    legend = curves.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == [
        "1. " + names[0],
        "2. " + names[1],
        "seed 0",
        "seed 1",
    ]
    n = {"model=linear": 1, "model=fc": 2}
    assert [t.get_text() for t in right.get_yticklabels()] == [
        f"best: {names[0]}  (n={n[names[0]]})",
        f"{names[1]}  (n={n[names[1]]})",
    ]
    # the valid loss as points, ± std where seeds repeat a setting; no test figure anywhere
    mean, std = statistics.mean(fc), statistics.stdev(fc)
    bars = {names[k]: c for k, c in enumerate(c for c in right.containers if isinstance(c, ErrorbarContainer))}
    assert not bars["model=linear"].has_xerr
    assert np.asarray(bars["model=linear"].lines[0].get_xydata()).ravel().tolist() == pytest.approx(
        [linear, names.index("model=linear")]
    )
    assert bars["model=fc"].has_xerr
    assert bars["model=fc"].lines[2][0].get_segments()[0][:, 0].tolist() == pytest.approx([mean - std, mean + std])
    assert not [t for t in fig.findobj(Text) if "test" in t.get_text()]


def synthetic_sweep(settings: int, seeds: int) -> tuple[list[str], dict, dict]:
    """A sweep's figure inputs: `settings` settings with long labels, `seeds` jobs each, 20 epochs."""
    order = [
        f"optimizer.lr={10 ** -(1 + k / 10):.6f},reg.l2={k * 1e-5:.5f},aug.degrees={k % 7}" for k in range(settings)
    ]
    curves = {
        s: [(str(seed), list(range(1, 21)), [0.5 + 0.02 * e - 0.001 * k for e in range(20)]) for seed in range(seeds)]
        for k, s in enumerate(order)
    }
    points = {s: (0.3 + 0.01 * k, 0.002 * (seeds > 1), seeds) for k, s in enumerate(order)}
    return order, curves, points


@pytest.mark.parametrize(("settings", "seeds"), [(1, 1), (12, 3), (50, 10)])
def test_report_figure_holds_from_1_to_50_settings(settings: int, seeds: int) -> None:
    """Nothing clipped: every text and legend inside the figure; distinct colours per setting, the seeds of a
    setting told apart; beyond a dozen settings the legend names the best and counts the rest."""
    order, curves, points = synthetic_sweep(settings, seeds)
    fig = figures.sweep(order, curves, points, "valid_loss", True, ["batch_size=64", "epochs=20"])
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    frame = fig.bbox

    def inside(box) -> bool:
        return frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1 and frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1

    ticks = {id(t) for ax in fig.axes for t in (*ax.get_xticklabels(), *ax.get_yticklabels())}
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in ticks]
    assert len(texts) > 5  # titles, axis labels, legend entries
    for text in texts:
        assert inside(text.get_window_extent(renderer)), text.get_text()
    for ax in fig.axes:  # with the tick labels drawn (those inside the view limits)
        assert inside(ax.get_tightbbox(renderer))
    curves_ax, ranked_ax = fig.axes
    shown_legend = curves_ax.get_legend()
    assert shown_legend is not None
    legend = shown_legend.get_window_extent(renderer)
    assert frame.x0 <= legend.x0 and legend.x1 <= frame.x1 and frame.y0 <= legend.y0 and legend.y1 <= frame.y1
    assert not legend.overlaps(ranked_ax.get_window_extent(renderer))
    lines = curves_ax.get_lines()
    assert len(lines) == settings * seeds
    colors = [tuple(line.get_color()) for line in lines[::seeds]]
    assert len(set(colors)) == settings
    assert len({(line.get_linestyle(), line.get_marker()) for line in lines[:seeds]}) == seeds
    entries = [t.get_text() for t in shown_legend.get_texts()]
    named = min(settings, figures.LEGEND_SETTINGS)
    assert entries[:named] == [f"{k + 1}. {figures.shorten(s, 40)}" for k, s in enumerate(order[:named])]
    assert (f"… {settings - named} more, coloured by rank" in entries) == (settings > named)
    assert ("seed 0" in entries) == (seeds > 1)
    labels = [t.get_text() for t in ranked_ax.get_yticklabels()]
    assert len(labels) == settings and labels[0].startswith("best: ") == (settings > 1)  # no rival: no "best"
    assert ranked_ax.get_xlabel() == (
        "valid loss, mean ± std over seeds (lower is better)"
        if seeds > 1
        else "valid loss, one job each (lower is better)"
    )


def test_a_sweep_ends_with_its_best_setting_and_a_report_that_fails_is_one_line(
    sweep_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    sweep_status.report(sweep_copy, None)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("fmsweep: best setting on validation: model=")
    assert out[1:] == [
        f"fmsweep: report: {sweep_copy / 'report.md'} (with report.csv, jobs.csv, report.png, "
        "best_samples.png, best_confusion.png)",
        f"fmsweep: all jobs of {sweep_copy} completed",
    ]

    def broken(sweep_dir: Path) -> None:
        raise RuntimeError("no space for the png")

    monkeypatch.setattr(report, "write_report", broken)
    sweep_status.report(sweep_copy, None)
    captured = capsys.readouterr()
    assert captured.out == f"fmsweep: all jobs of {sweep_copy} completed\n"
    assert captured.err.splitlines()[0] == (
        f"fmsweep: the report of {sweep_copy} could not be written (RuntimeError: "
        f"no space for the png); try: fmsweep report {sweep_copy}"
    )


def test_a_sweep_of_seeds_alone_names_its_one_setting(sweep_copy: Path) -> None:
    for d in job_dirs(sweep_copy)[:2]:  # the linear jobs: the fc ones, seeds 0 and 1, are left
        shutil.rmtree(d)
    _, _, best = report.write_report(sweep_copy)
    assert best.startswith("one setting: batch_size=64,epochs=2,model=fc, mean valid loss ")
    assert best.endswith(" over 2 jobs")


def test_searched_floats_are_shown_rounded_and_kept_whole_in_the_csv(sweep_copy: Path) -> None:
    """A search's trials carry full floats (optimizer.lr=0.006431172050131994): report.md and report.png show them
    to 4 significant digits, report.csv and jobs.csv keep them whole."""
    full = {"linear": "0.006431172050131994", "fc": "1.2345678e-05"}
    for d in job_dirs(sweep_copy):
        recorded = list(OmegaConf.load(d / ".hydra" / "overrides.yaml"))
        model = next(o.partition("=")[2] for o in recorded if o.startswith("model="))
        recorded.append(f"optimizer.lr={full[model]}")
        OmegaConf.save(OmegaConf.create(recorded), d / ".hydra" / "overrides.yaml")
    markdown, _, _ = report.write_report(sweep_copy)
    shown = {"model=linear,optimizer.lr=0.006431", "model=fc,optimizer.lr=1.235e-05"}
    assert {row[1] for row in table_rows(markdown, "Settings")} == shown
    assert {row[1].rpartition(",seed=")[0] for row in table_rows(markdown, "Jobs")} == shown
    assert full["linear"] not in markdown and full["fc"] not in markdown
    settings = list(csv.DictReader(io.StringIO((sweep_copy / "report.csv").read_text())))
    assert {r["optimizer.lr"] for r in settings} == set(full.values())
    jobs = list(csv.DictReader(io.StringIO((sweep_copy / "jobs.csv").read_text())))
    assert all(f"optimizer.lr={full[r['model']]}" in r["overrides"] for r in jobs)
    runs = find_runs(sweep_copy)
    stats = report.setting_stats(runs)
    fig = report.figure(runs, stats, report.ranked(stats, "valid_loss", True), "valid_loss", True)
    texts = " ".join(t.get_text() for t in fig.findobj(Text))
    assert all(label in texts for label in shown) and full["linear"] not in texts


def test_a_search_on_valid_accuracy_draws_it_in_percent(sweep_copy: Path) -> None:
    """report.png follows the ranking metric; accuracies in percent, on both panels."""
    runs = find_runs(sweep_copy)
    stats = report.setting_stats(runs)
    order = report.ranked(stats, "valid_acc", False)
    fig = report.figure(runs, stats, order, "valid_acc", False)
    curves, right = fig.axes
    assert curves.get_ylabel() == "valid acc (%)"
    assert right.get_xlabel() == "valid acc (%), mean ± std over seeds (higher is better)"
    drawn = [np.asarray(line.get_ydata()).tolist() for line in curves.get_lines()]
    assert [100 * row["valid_acc"] for row in runs[0].history()] in drawn
    best = next(c for c in right.containers if isinstance(c, ErrorbarContainer))
    assert np.asarray(best.lines[0].get_xdata())[0] == pytest.approx(100 * stats[order[0]]["valid_acc"][0])


def rewrite_metrics(run_dir: Path, **changes: object) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, **changes}))


def test_jobs_whose_best_epoch_is_their_last_are_flagged_still_improving(sweep_copy: Path) -> None:
    dirs = job_dirs(sweep_copy)  # linear seeds 0, 1; fc seeds 0, 1; 2 epochs each
    for d, best_epoch in zip(dirs, [2, 2, 2, 1]):
        rewrite_metrics(d, best_epoch=best_epoch, epochs_run=2)
    markdown, _, _ = report.write_report(sweep_copy)
    assert (
        "3 of 4 completed jobs had their best valid loss at their last epoch: they were still improving; train "
        "longer (epochs=4)."
    ) in markdown
    assert {row[1]: row[7] for row in table_rows(markdown, "Settings")} == {
        "model=linear": "2 of 2",
        "model=fc": "1 of 2",
    }
    settings = csv.DictReader(io.StringIO((sweep_copy / "report.csv").read_text()))
    rows = {r["setting"]: r["still_improving"] for r in settings}
    assert rows == {"batch_size=64,epochs=2,model=linear": "2", "batch_size=64,epochs=2,model=fc": "1"}

    for d in dirs:
        rewrite_metrics(d, best_epoch=1)
    markdown, _, _ = report.write_report(sweep_copy)
    assert (
        "No completed job (4) had its best valid loss at its last epoch: each had stopped improving on validation "
        "before its epochs ran out."
    ) in markdown


@pytest.mark.parametrize(
    ("best_epoch", "epochs_run", "stopped_early", "improving"),
    [
        (5, 5, None, True),
        (4, 5, None, False),
        (28, 30, None, True),
        (27, 30, None, False),
        (1, 1, None, True),
        (28, 30, 30, False),
    ],
)
def test_still_improving_is_the_last_tenth_of_the_epochs_run(
    best_epoch: int, epochs_run: int, stopped_early: int | None, improving: bool
) -> None:
    metrics = {
        "status": "completed",
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "stopped_early": stopped_early,
    }
    assert report.still_improving(Run(Path("."), ".", 0, [], OmegaConf.create(), {}, metrics)) == improving


def stats_of(loss: tuple[float, float], acc: tuple[float, float], n: int) -> dict:
    """A setting's entry of report.setting_stats: (mean, std) of the valid loss and accuracy over n jobs."""
    return {"jobs": n, "n": n, "valid_loss": loss, "valid_acc": acc}


@pytest.mark.parametrize(
    ("next_acc", "said"),
    [
        # the next setting is better on accuracy
        ((0.85, 0.01), "The two disagree: the next setting is better on valid acc."),
        # the lead on loss is clear (5.0 standard errors), on accuracy within noise (0.5)
        (
            (0.795, 0.01),
            "The two disagree: the lead is clear on valid loss (over 2 standard errors) but within noise on "
            "valid acc (under 1).",
        ),
        # both leads clear: no disagreement
        ((0.70, 0.01), ""),
    ],
)
def test_the_best_settings_margins_on_loss_and_accuracy_and_when_they_disagree(
    next_acc: tuple[float, float], said: str
) -> None:
    stats = {"a": stats_of((0.30, 0.01), (0.80, 0.01), 2), "b": stats_of((0.35, 0.01), next_acc, 2)}  # 1 SE: 0.01
    line = report.margins_line(stats, ["a", "b"], {"a": "reg=l2", "b": "reg=none"})
    gap = abs(0.80 - next_acc[0])
    word = "higher" if next_acc[0] < 0.80 else "lower"
    acc = f"valid acc {100 * gap:.2f} points {word} ({gap / 0.01:.1f} standard errors)"
    assert line == f"Against the next setting, reg=none: valid loss 0.0500 lower (5.0 standard errors), {acc}." + (
        f" {said}" if said else ""
    )
    # one job each: the gaps alone, and only their signs can disagree
    stats = {k: {**v, "n": 1, "jobs": 1} for k, v in stats.items()}
    line = report.margins_line(stats, ["a", "b"], {"a": "reg=l2", "b": "reg=none"})
    assert "standard errors" not in line and ("disagree" in line) == (next_acc[0] > 0.80)


def test_the_report_says_when_loss_and_accuracy_disagree(sweep_copy: Path) -> None:
    """A constructed sweep: fc has the lower valid loss, linear the higher valid accuracy."""
    values = [(0.50, 0.80), (0.52, 0.82), (0.40, 0.70), (0.42, 0.72)]
    for d, (loss, acc) in zip(job_dirs(sweep_copy), values):
        rewrite_metrics(d, valid_loss=loss, valid_acc=acc)
    markdown, _, _ = report.write_report(sweep_copy)
    assert (
        "Against the next setting, model=linear: valid loss 0.1000 lower (7.1 standard errors), valid acc 10.00 "
        "points lower (7.1 standard errors). The two disagree: the next setting is better on valid acc.\n"
    ) in markdown


def test_settings_show_the_values_their_config_group_options_set(make_cfg) -> None:
    def run(*overrides: str) -> Run:
        cfg = make_cfg(*overrides)
        choices = {"model": "fc", "reg": "none"} | {
            o.partition("=")[0]: o.partition("=")[2]
            for o in overrides
            if o.partition("=")[0] in ("model", "reg", "optimizer")
        }
        return Run(Path("."), ".", 0, sorted(overrides), cfg, choices, {})

    shared = ["model=fc"]
    assert report.label(run("model=fc", "reg=l2", "seed=0"), shared) == "reg=l2 (l2=0.001)"
    assert report.label(run("model=fc", "reg=dropout"), shared) == "reg=dropout (input_dropout=0.2, dropout=0.5)"
    assert report.label(run("model=fc", "reg=none"), shared) == "reg=none"  # every value zero
    # a key the job sets itself is in its overrides already; lists and interpolations stay behind the option's name
    assert report.label(run("model=fc", "reg=l2", "reg.l2=1e-4"), shared) == "reg.l2=1e-4,reg=l2"
    assert report.label(run("model=fc", "reg=dropout"), []) == "model=fc,reg=dropout (input_dropout=0.2, dropout=0.5)"
    assert report.label(run("optimizer=sgd"), []) == "optimizer=sgd (lr=0.01, momentum=0.9, nesterov=True)"


def test_jobs_csv_paths_are_relative_to_the_folder_reported_on(
    sweep_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [d.name for d in job_dirs(sweep_copy)]
    monkeypatch.chdir(tmp_path)
    for given in (sweep_copy, Path("sweep"), Path("sweep/")):
        report.write_report(given)
        assert [r["path"] for r in csv.DictReader(io.StringIO((sweep_copy / "jobs.csv").read_text()))] == names
    report.write_report(Path("sweep") / names[0])  # a single run dir
    assert [r["path"] for r in csv.DictReader(io.StringIO((sweep_copy / names[0] / "jobs.csv").read_text()))] == ["."]


def test_the_best_jobs_test_images_are_shown_and_their_absence_said(sweep_copy: Path) -> None:
    runs = find_runs(sweep_copy)
    stats = report.setting_stats(runs)
    order = report.ranked(stats, "valid_loss", True)
    best = min((r for r in runs if r.setting == order[0]), key=lambda r: r.metrics["valid_loss"])
    markdown, written, _ = report.write_report(sweep_copy)
    for name in ("samples.png", "confusion.png"):
        assert (sweep_copy / f"best_{name}").read_bytes() == (best.path / name).read_bytes()
        assert sweep_copy / f"best_{name}" in written and f"](best_{name})" in markdown
    own = ",".join(o for o in best.overrides if o.startswith(("model=", "seed=")))
    assert f"Job {report.job_id(best)} ({own}), the best setting's best job on valid loss" in markdown

    for d in job_dirs(sweep_copy):  # runs from before fmsweep wrote them
        (d / "samples.png").unlink()
        (d / "confusion.png").unlink()
    markdown, written, _ = report.write_report(sweep_copy)
    assert (
        "The job has no samples.png and no confusion.png (a run from before fmsweep wrote them): see its test "
        "images in TensorBoard."
    ) in markdown
    assert "best_samples.png" not in markdown and not (sweep_copy / "best_samples.png").exists()
    assert written == [sweep_copy / name for name in ("report.md", "report.csv", "jobs.csv", "report.png")]


GRID = [("1e-3", "0"), ("1e-3", "1e-4"), ("1e-2", "0"), ("1e-2", "1e-4")]


def test_a_grid_over_two_keys_gets_a_heatmap_of_the_ranking_metric(sweep_copy: Path) -> None:
    """The tiny sweep's four jobs relabelled as the lr x l2 grid (one seed each)."""
    for d, (lr, l2) in zip(job_dirs(sweep_copy), GRID):
        loaded = cast("Iterable[str]", OmegaConf.load(d / ".hydra" / "overrides.yaml"))
        recorded = [o for o in loaded if not o.startswith(("model=", "seed="))]
        OmegaConf.save(
            OmegaConf.create([*recorded, f"optimizer.lr={lr}", f"reg.l2={l2}", "seed=0"]),
            d / ".hydra" / "overrides.yaml",
        )
    markdown, written, _ = report.write_report(sweep_copy)
    assert sweep_copy / "heatmap.png" in written and "](heatmap.png)" in markdown
    assert (sweep_copy / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = matplotlib.image.imread(sweep_copy / "heatmap.png")
    assert 300 <= png.shape[0] <= 800 and 400 <= png.shape[1] <= 1000

    runs = find_runs(sweep_copy)
    stats = report.setting_stats(runs)
    order = report.ranked(stats, "valid_loss", True)
    fig = report.heatmap(runs, stats, order, "valid_loss", True)
    assert fig is not None
    ax = fig.axes[0]
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("optimizer.lr", "reg.l2")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1e-3", "1e-2"]  # by value
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1e-4"]
    losses = {
        (lr, l2): json.loads((d / "metrics.json").read_text())["valid_loss"]
        for d, (lr, l2) in zip(job_dirs(sweep_copy), GRID)
    }
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {
        (["1e-3", "1e-2"].index(lr), ["0", "1e-4"].index(l2)): f"{loss:.4f}" for (lr, l2), loss in losses.items()
    }
    best = min(losses, key=losses.__getitem__)
    [frame] = ax.patches
    assert isinstance(frame, Rectangle)
    assert frame.get_xy() == (["0", "1e-4"].index(best[1]) - 0.5, ["1e-3", "1e-2"].index(best[0]) - 0.5)

    shutil.rmtree(job_dirs(sweep_copy)[3])  # a combination missing: no longer a grid, and the old map goes
    _, written, _ = report.write_report(sweep_copy)
    assert not (sweep_copy / "heatmap.png").exists() and sweep_copy / "heatmap.png" not in written
