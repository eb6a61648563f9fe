"""The real command line, end to end, in subprocesses."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, fast_overrides

from fmsweep import checkpoint, train


def fmsweep(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmsweep", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_single_run_from_the_command_line_trains_what_its_overrides_say(make_cfg, data_root: Path, tmp_path: Path) -> None:
    overrides = ["model=fc", "reg.l2=1e-3", "aug=flip_affine", "seed=3"]
    proc = fmsweep(*fast_overrides(data_root), *overrides, f"hydra.run.dir={tmp_path / 'cli'}")
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1" in proc.stdout
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 1
    assert (tmp_path / "cli" / "summary.txt").read_text().startswith(
        "## Command\npython -m fmsweep " + " ".join([*fast_overrides(data_root), *overrides]))
    # the same overrides composed in Python train bitwise the same model: the CLI passes all of them on
    train.run(make_cfg(*overrides), tmp_path / "api")
    cli, api = (checkpoint.load(tmp_path / d / checkpoint.LAST)["state_dict"] for d in ("cli", "api"))
    assert all(torch.equal(cli[k], api[k]) for k in api)
    train.run(make_cfg(*overrides[:1], *overrides[2:]), tmp_path / "no_l2")  # while each override matters
    no_l2 = checkpoint.load(tmp_path / "no_l2" / checkpoint.LAST)["state_dict"]
    assert not torch.equal(cli["classifier.1.weight"], no_l2["classifier.1.weight"])


@pytest.mark.slow
def test_multirun_makes_one_complete_job_dir_per_combination(data_root: Path, tmp_path: Path) -> None:
    proc = fmsweep("-m", *fast_overrides(data_root), "model=linear,fc", "seed=0,1", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    # <job number>_<overrides>; data.root, data.download and device are left out of the names
    assert [p.name for p in jobs] == [f"{i}_batch_size=32,epochs=1,model={m},seed={s}"
                                      for i, (m, s) in enumerate([("linear", 0), ("linear", 1), ("fc", 0), ("fc", 1)])]
    for job in jobs:
        for name in ("best_model.pt", "last.pt", "metrics.json", "history.csv", "summary.txt"):
            assert (job / name).is_file(), f"{job / name} missing"
        assert list(job.glob("events.out.tfevents.*"))
    # each job trained its own setting: the two seeds of a model differ, and each dir holds its model
    results = [json.loads((job / "metrics.json").read_text()) for job in jobs]
    assert results[0]["valid_loss"] != results[1]["valid_loss"] and results[2]["valid_loss"] != results[3]["valid_loss"]
    assert [type(checkpoint.load_model(job).net).__name__ for job in jobs] == ["Linear", "Linear", "FullyConnected",
                                                                          "FullyConnected"]


def test_missing_dataset_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    proc = fmsweep(f"data.root={tmp_path / 'nowhere'}", "data.download=false", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fmsweep: error: ")
    assert "train-images-idx3-ubyte" in lines[0] and "t10k-labels-idx1-ubyte" in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
