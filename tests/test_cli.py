"""The real command line, end to end, in subprocesses."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from conftest import ROOT, fast_overrides


def fmsweep(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmsweep", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_single_run_from_the_command_line(data_root: Path, tmp_path: Path) -> None:
    proc = fmsweep(*fast_overrides(data_root), "model=fc", "reg.l2=1e-3", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1" in proc.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 1
    assert OmegaConf.load(tmp_path / ".hydra" / "config.yaml").reg.l2 == 1e-3
    assert (tmp_path / "summary.txt").read_text().startswith("## Command\npython -m fmsweep ")


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
    seeds_and_models = {(json.loads((j / "metrics.json").read_text())["num_params"], j.name) for j in jobs}
    assert len({n for n, _ in seeds_and_models}) == 2


def test_missing_dataset_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    proc = fmsweep(f"data.root={tmp_path / 'nowhere'}", "data.download=false", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fmsweep: error: ")
    assert "train-images-idx3-ubyte" in lines[0] and "t10k-labels-idx1-ubyte" in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
