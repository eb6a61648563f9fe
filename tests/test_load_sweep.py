"""`fmsweep.load_sweep`: the results guide's notebook example runs on a real sweep, and its DataFrames hold what the job
dirs hold."""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT

import fmsweep
from fmsweep.errors import UserError

GUIDE = ROOT / "docs" / "results.md"
EXAMPLE_DIR = "multirun/lab"


def guide_example() -> str:
    """The Python block of the results guide that loads the example sweep."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    [block] = [b for b in blocks if f'fmsweep.load_sweep("{EXAMPLE_DIR}")' in b]
    return block


@pytest.fixture(scope="module")
def lab(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guide's example sweep (reg none/l2 by two seeds here, 2 epochs) by the real command line, in
    multirun/lab below a fresh folder."""
    folder = tmp_path_factory.mktemp("lab")
    args = [
        f"data.root={data_root}",
        "data.download=false",
        "device=cpu",
        "batch_size=64",
        "epochs=2",
        "model=fc",
        "reg=none,l2",
        "seed=0,1",
        f"hydra.sweep.dir={EXAMPLE_DIR}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "fmsweep", "-m", *args], cwd=folder, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return folder


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(
        (p for p in sweep_dir.iterdir() if (p / "metrics.json").is_file()), key=lambda p: int(p.name.partition("_")[0])
    )


def test_the_guide_example_runs_and_its_frames_hold_the_job_dirs(
    lab: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(lab)
    names: dict = {}
    exec(compile(guide_example(), str(GUIDE), "exec"), names)
    sweep, best = names["sweep"], names["best"]
    dirs = job_dirs(lab / EXAMPLE_DIR)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in dirs]

    jobs = sweep.jobs
    assert len(jobs) == len(dirs) == 4
    assert list(jobs["reg"]) == ["none", "none", "l2", "l2"] and list(jobs["seed"]) == [0, 1, 0, 1]
    assert jobs["seed"].dtype.kind == "i" and jobs["valid_loss"].dtype.kind == "f"
    assert list(jobs["path"]) == [str(d.resolve()) for d in dirs]
    for column in ("valid_loss", "valid_acc", "test_acc", "best_epoch", "epochs_run"):
        assert list(jobs[column]) == [m[column] for m in metrics]
    assert set(jobs["status"]) == {"completed"}

    history = sweep.history
    rows = [list(csv.DictReader((d / "history.csv").open())) for d in dirs]
    assert len(history) == sum(len(r) for r in rows) == 8
    first = history[history["job"] == jobs["job"][2]]
    assert list(first["epoch"]) == [1, 2] and list(first["reg"]) == ["l2", "l2"]
    assert list(first["valid_acc"]) == [float(r["valid_acc"]) for r in rows[2]]

    settings = sweep.settings
    assert len(settings) == 2 and list(settings["n"]) == [2, 2] and list(settings["rank"]) == [1, 2]
    by_reg = {reg: [m["valid_loss"] for m, r in zip(metrics, jobs["reg"]) if r == reg] for reg in ("none", "l2")}
    means = {reg: statistics.mean(v) for reg, v in by_reg.items()}
    winner = min(means, key=means.__getitem__)
    assert settings["reg"][0] == winner and settings["valid_loss_mean"][0] == pytest.approx(means[winner])
    assert settings["valid_loss_std"][0] == pytest.approx(statistics.stdev(by_reg[winner]))

    # the best run: the best setting's job with the lowest valid loss, and its model
    own = [(m["valid_loss"], d) for m, d, r in zip(metrics, dirs, jobs["reg"]) if r == winner]
    assert best.path == min(own)[1].resolve() and best.value == min(own)[0]
    assert str(best).startswith(f"job {best.job} (") and "ahead of the next setting" in str(best)
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    assert torch.equal(names["model"](images), fmsweep.load_model(min(own)[1])(images))
    assert sweep.trials is None
    assert capsys.readouterr().out  # the example prints its frames and the best run


def test_the_best_run_follows_the_metrics(lab: Path, tmp_path: Path) -> None:
    """Negative control for best(): make the worst job of the losing setting the best of all, on valid loss, and
    the best run moves to it."""
    sweep_dir = shutil.copytree(lab / EXAMPLE_DIR, tmp_path / "lab")
    before = fmsweep.load_sweep(sweep_dir)
    loser = before.jobs[before.jobs["setting"] != before.best().setting].sort_values("valid_loss").iloc[-1]
    path = Path(loser["path"])
    metrics = json.loads((path / "metrics.json").read_text())
    metrics["valid_loss"] = before.jobs["valid_loss"].min() / 10
    (path / "metrics.json").write_text(json.dumps(metrics))
    after = fmsweep.load_sweep(sweep_dir).best()
    assert after.path == path and after.setting == loser["setting"]


def test_a_run_dir_is_a_sweep_of_one(lab: Path) -> None:
    run_dir = job_dirs(lab / EXAMPLE_DIR)[0]
    sweep = fmsweep.load_sweep(run_dir)
    assert len(sweep.jobs) == 1 and sweep.jobs["path"][0] == str(run_dir.resolve())
    assert sweep.best().path == run_dir.resolve() and "ahead" not in str(sweep.best())


def test_a_folder_without_runs_is_one_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not an fmsweep sweep or run directory"):
        fmsweep.load_sweep(tmp_path)
