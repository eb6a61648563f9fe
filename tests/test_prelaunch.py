"""The checks of a sweep before anything is submitted (fmsweep.sweep.prelaunch) that need no SLURM: the time limit
against SLURM's stop warning."""
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from fmsweep.sweep import prelaunch
from fmsweep.errors import UserError


@pytest.mark.parametrize(("timeout_min", "signal_delay_s", "least_min"),
                         [(2, 120, 4), (3, 120, 4), (1, 30, 2), (1, 90, 3), (5, 200, 7)])
def test_a_time_limit_with_too_little_training_before_the_stop_warning_is_refused(
        timeout_min: int, signal_delay_s: int, least_min: int) -> None:
    with pytest.raises(UserError, match=rf"set hydra\.launcher\.timeout_min={least_min} or more"):
        prelaunch.check_slurm_timeout({"timeout_min": timeout_min, "signal_delay_s": signal_delay_s})
    prelaunch.check_slurm_timeout({"timeout_min": least_min, "signal_delay_s": signal_delay_s})  # the one it names


@pytest.mark.parametrize(("timeout_min", "signal_delay_s"), [(4, 120), (240, 120), (2, 30), (10, 120)])
def test_a_time_limit_that_leaves_enough_training_passes(timeout_min: int, signal_delay_s: int) -> None:
    prelaunch.check_slurm_timeout({"timeout_min": timeout_min, "signal_delay_s": signal_delay_s})


def test_the_time_limit_is_checked_before_sbatch_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_slurm(*args: object, **kwargs: object) -> None:
        raise AssertionError("SLURM was asked")

    monkeypatch.setattr(prelaunch.shutil, "which", no_slurm)
    monkeypatch.setattr(prelaunch.subprocess, "run", no_slurm)
    with pytest.raises(UserError, match="timeout_min=2 leaves a job 0 s of training"):
        prelaunch.check_slurm_request({"timeout_min": 2, "signal_delay_s": 120, "partition": None})


def test_a_slurm_sweep_with_too_short_a_time_limit_is_one_line_and_submits_nothing(data_root: Path,
                                                                                   tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "fmsweep", "-m", "hydra/launcher=slurm", "hydra.launcher.timeout_min=2",
                           f"data.root={data_root}", "data.download=false", "device=cpu", "seed=0,1",
                           f"hydra.sweep.dir={sweep_dir}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "fmsweep: error: hydra.launcher.timeout_min=2 leaves a job 0 s of training before SLURM's stop warning, which "
        "comes hydra.launcher.signal_delay_s=120 s before the time limit; it needs at least 120 s: set "
        "hydra.launcher.timeout_min=4 or more; nothing was submitted"]
    assert not sweep_dir.exists()
