"""Ctrl-C in the launching command of a sweep whose jobs run apart from it (submitit_local, SLURM): one line, exit
130, saying what became of the jobs and how to resume the sweep."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, Gate, wait_for

from fmsweep.sweep.launch import interrupted_line


@pytest.mark.slow
def test_ctrl_c_in_a_submitit_local_sweep_is_one_line_and_its_jobs_stop_resumable(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    command = [
        sys.executable,
        "-m",
        "fmsweep",
        "-m",
        f"data.root={data_root}",
        "data.download=false",
        "device=cpu",
        "model=fc",
        "seed=0,1",
        "epochs=3",
        "batch_size=32",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={tmp_path}",
    ]
    held.hold(2)  # both jobs wait after epoch 2 until the Ctrl-C
    # its own process group, which a terminal's Ctrl-C signals as a whole: the sweep and its jobs' processes; SIGINT
    # as a terminal's command has it (where the tests run in a background job, every child inherits it ignored)
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    held.wait_held(2, runs=2, alive=lambda: proc.poll() is None)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err
    assert err.splitlines() == [
        f"fmsweep: interrupted; the sweep's jobs got the Ctrl-C too and stopped, each "
        f"resumable from its last.pt; resume the sweep with: fmsweep resume {tmp_path}"
    ]
    assert len(list(tmp_path.glob("*/last.pt"))) == 2
    assert not list(tmp_path.glob("*/metrics.json"))
    # the jobs' controllers ended before the line; a job killed by its controller dies with it (the wait is only a
    # guard against a hang: a surviving process fails it)
    wait_for(
        "every process of the sweep to end",
        lambda: subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).returncode != 0,
        timeout=60,
    )


def test_ctrl_c_in_a_slurm_sweep_names_its_jobs_and_how_to_watch_and_cancel_them() -> None:
    line = interrupted_line(True, ["12_0", "12_1"], Path("/s"))
    assert line == (
        "fmsweep: interrupted; the sweep's SLURM jobs 12 (array of 2) keep running (watch: fmsweep status "
        "/s --watch; cancel: fmsweep cancel /s); once they ended, resume the sweep with: fmsweep resume /s"
    )
