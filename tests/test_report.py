"""`python -m fmsweep.report` on the tiny sweep: job table, seeds aggregated per setting, CSV, plot, statuses."""
import csv
import io
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from omegaconf import OmegaConf

from conftest import ROOT
from fmsweep import figures, report
from fmsweep.runs import Run, find_runs, read_overrides
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
    # the markdown, then where each file went, worded as python -m fmsweep.ensemble says it
    assert printed == (sweep_copy / "report.md").read_text() + "\n" + "".join(
        f"Wrote {sweep_copy / name}\n" for name in ("report.md", "report.csv", "report.png"))
    metrics = [json.loads((d / "metrics.json").read_text()) for d in job_dirs(sweep_copy)]

    jobs = table_rows(printed, "Jobs")
    assert [row[0] for row in jobs] == ["0", "1", "2", "3"]
    for row, m, (model, seed) in zip(jobs, metrics, [("linear", 0), ("linear", 1), ("fc", 0), ("fc", 1)]):
        assert row[1] == f"batch_size=64,epochs=2,model={model},seed={seed}"
        assert row[2] == "completed" and row[3] == str(m["best_epoch"])
        assert row[4:8] == [f"{m['valid_loss']:.4f}", f"{100 * m['valid_acc']:.2f}", f"{m['test_loss']:.4f}",
                            f"{100 * m['test_acc']:.2f}"]
        assert row[8] == str(m["num_params"])

    settings = table_rows(printed, "Settings")
    assert [row[0] for row in settings] == ["batch_size=64,epochs=2,model=linear", "batch_size=64,epochs=2,model=fc"]
    for row, group in zip(settings, (metrics[:2], metrics[2:])):
        accs = [100 * m["test_acc"] for m in group]
        losses = [m["valid_loss"] for m in group]
        assert row[1] == "2"
        assert row[2] == f"{statistics.mean(losses):.4f} ± {statistics.stdev(losses):.4f}"
        assert row[5] == f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}"

    with open(sweep_copy / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert [float(r["test_acc"]) for r in rows] == [m["test_acc"] for m in metrics]
    assert {r["setting"] for r in rows} == {row[0] for row in settings}

    png = matplotlib.image.imread(sweep_copy / "report.png")
    assert png.ndim == 3 and png.shape[0] > 300 and png.shape[1] > 800
    assert png.std() > 0.05  # something is drawn
    assert "![" in printed and "(report.png)" in printed


def test_failed_and_unfinished_jobs_appear_with_their_status(sweep_copy: Path, capsys: pytest.CaptureFixture) -> None:
    dirs = job_dirs(sweep_copy)
    (dirs[1] / "metrics.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom"}))
    (dirs[3] / "metrics.json").unlink()
    history = (dirs[3] / "history.csv").read_text().splitlines()
    (dirs[3] / "history.csv").write_text("\n".join(history[:2]) + "\n")  # header and epoch 1

    markdown, _ = report.write_report(sweep_copy)
    jobs = table_rows(markdown, "Jobs")
    assert [row[2] for row in jobs] == ["completed", "failed", "completed", "unfinished (1/2 epochs)"]
    assert jobs[1][4:] == ["–"] * 6
    assert "4 jobs: 2 completed, 1 failed, 1 unfinished (1/2 epochs)" in markdown
    settings = table_rows(markdown, "Settings")
    assert [row[1] for row in settings] == ["1 of 2", "1 of 2"]
    m0 = json.loads((dirs[0] / "metrics.json").read_text())
    assert settings[0][2:] == [f"{m0['valid_loss']:.4f}", f"{100 * m0['valid_acc']:.2f}", f"{m0['test_loss']:.4f}",
                               f"{100 * m0['test_acc']:.2f}"]  # one job: its values, no spread

    rows = list(csv.DictReader(io.StringIO((sweep_copy / "report.csv").read_text())))
    assert [r["status"] for r in rows] == ["completed", "failed", "completed", "unfinished (1/2 epochs)"]
    assert rows[1]["test_acc"] == ""


def test_a_folder_without_runs_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fmsweep.report", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fmsweep: error: ") and str(tmp_path) in lines[0]
    assert not (tmp_path / "report.md").exists()


def test_read_overrides_orders_and_leaves_out_as_hydras_job_dir_name(tmp_path: Path) -> None:
    """Hydra's own override_dirname is the reference: the same overrides, excluded keys and order."""
    given = ["seed=1", "~aug", "model@net=fc", "++epochs=3", "+reg.l2=1e-3", "data.root=/data", "Batch_size=64",
             "optimizer=sgd", "device=cpu"]
    exclude = ["data.root", "device", "model"]
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(given), tmp_path / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"config": {"override_dirname": {"exclude_keys": exclude}}}}}),
                   tmp_path / ".hydra" / "hydra.yaml")
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

    markdown, _ = report.write_report(sweep_copy)
    assert [row[1] for row in table_rows(markdown, "Jobs")] == names
    assert [row[0] for row in table_rows(markdown, "Settings")] == ["batch_size=64,epochs=2,model=linear",
                                                                      "batch_size=64,epochs=2,model=fc"]
    assert [r["overrides"] for r in csv.DictReader(io.StringIO((sweep_copy / "report.csv").read_text()))] == names
    logged = [hparams(OmegaConf.load(d / ".hydra" / "config.yaml"), read_overrides(d))["overrides"] for d in dirs]
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
    curves = {"model=fc": [(list(range(1, epochs + 1)), [0.5] * epochs)]}
    fig = figures.sweep(curves, {"model=fc": (0.5, 0.0, 1)}, [])
    FigureCanvasAgg(fig).draw()
    ticks = drawn_xticks(fig.axes[0])
    if epochs <= 3:
        assert ticks == [str(e) for e in range(1, epochs + 1)]
    else:
        assert len(ticks) >= 4 and all(t.isdigit() and 1 <= int(t) <= epochs for t in ticks)


def test_report_figure_points_labels_and_title(sweep_copy: Path) -> None:
    dirs = job_dirs(sweep_copy)
    (dirs[1] / "metrics.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom"}))
    runs = find_runs(sweep_copy)
    fig = report.figure(runs, report.setting_stats(runs))
    FigureCanvasAgg(fig).draw()
    curves, right = fig.axes
    assert drawn_xticks(curves) == ["1", "2"]

    # the overrides every job shares are stated once, in the title; labels name only what differs
    assert fig.get_suptitle() == "every job: batch_size=64,epochs=2"
    assert sum(t.get_text().count("batch_size=64") for t in fig.findobj(Text)) == 1
    assert [t.get_text() for t in curves.get_legend().get_texts()] == ["model=linear", "model=fc"]
    assert [t.get_text() for t in right.get_yticklabels()] == ["model=linear  (n=1)", "model=fc  (n=2)"]

    # test accuracy as points: no bars (a zoomed axis would exaggerate them); an error bar of ± std for two
    # jobs, none for one, whose value is shown without a spread
    assert not [p for p in right.patches if isinstance(p, Rectangle)]
    linear = json.loads((dirs[0] / "metrics.json").read_text())["test_acc"] * 100
    fc = [json.loads((d / "metrics.json").read_text())["test_acc"] * 100 for d in dirs[2:]]
    mean, std = statistics.mean(fc), statistics.stdev(fc)
    one, two = [c for c in right.containers if isinstance(c, ErrorbarContainer)]
    assert not one.has_xerr and one.lines[0].get_xydata().ravel().tolist() == pytest.approx([linear, 0])
    assert two.has_xerr and two.lines[0].get_xydata().ravel().tolist() == pytest.approx([mean, 1])
    assert two.lines[2][0].get_segments()[0][:, 0].tolist() == pytest.approx([mean - std, mean + std])
    assert [t.get_text() for t in right.texts] == [f"{linear:.2f}", f"{mean:.2f} ± {std:.2f}"]
