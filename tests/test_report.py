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

from conftest import ROOT
from fmsweep import report


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
    assert printed == (sweep_copy / "report.md").read_text()
    metrics = [json.loads((d / "metrics.json").read_text()) for d in job_dirs(sweep_copy)]

    jobs = table_rows(printed, "Jobs")
    assert [row[0] for row in jobs] == ["0", "1", "2", "3"]
    for row, m, (model, seed) in zip(jobs, metrics, [("linear", 0), ("linear", 1), ("fc", 0), ("fc", 1)]):
        assert set(row[1].split(",")) == {f"model={model}", f"seed={seed}", "batch_size=64", "epochs=2"}
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

    markdown = report.write_report(sweep_copy)
    jobs = table_rows(markdown, "Jobs")
    assert [row[2] for row in jobs] == ["completed", "failed", "completed", "unfinished (1/2 epochs)"]
    assert jobs[1][4:] == ["–"] * 6
    assert "4 jobs: 2 completed, 1 failed, 1 unfinished (1/2 epochs)" in markdown
    settings = table_rows(markdown, "Settings")
    assert [row[1] for row in settings] == ["1 of 2", "1 of 2"]
    m0 = json.loads((dirs[0] / "metrics.json").read_text())
    assert settings[0][5] == f"{100 * m0['test_acc']:.2f}"  # one job: its value, no spread

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
