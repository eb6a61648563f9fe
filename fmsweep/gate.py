"""A test's hold on training at an epoch's end, so that a test that cancels, kills or races a job acts on it at a
known point instead of sizing it in epochs and hoping it is still there.

Only the environment turns it on (no config key reaches it): with FMSWEEP_TEST_GATE=DIR, a run that has committed
epoch E (last.pt, best_model.pt, history.csv, TensorBoard; E = 0 is its start, before its stop handlers and its
run dir's lock) and finds in DIR/hold a number H <= E writes
DIR/<run dir name>@<E> and waits until DIR/hold is gone or holds a number above E, or that file of its own is
gone (the test let that one run go), or a stop signal arrives (the loop then stops as it would mid-epoch).
Without the variable the check is one dictionary lookup per epoch.

FMSWEEP_TEST_CRASH=<point>:<n> kills a launching command (SIGKILL) the n-th time it passes a point of its SLURM
submission (`crash_at`), as a test's fault.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

ENV = "FMSWEEP_TEST_GATE"
POLL_S = 0.05


def held_at(folder: Path, epoch: int) -> bool:
    """Whether the gate in `folder` holds a run that has committed `epoch`."""
    try:
        return int((folder / "hold").read_text()) <= epoch
    except FileNotFoundError:
        return False


def wait(run_dirs: list[Path], epoch: int, stopped: Callable[[], bool]) -> None:
    """Wait at the end of `epoch` while a test's gate (FMSWEEP_TEST_GATE) holds the runs of `run_dirs`."""
    folder = os.environ.get(ENV)
    if not folder or not held_at(Path(folder), epoch):
        return
    markers = [Path(folder) / f"{run_dir.name}@{epoch}" for run_dir in run_dirs]
    for marker in markers:
        marker.touch()
    while held_at(Path(folder), epoch) and all(marker.exists() for marker in markers) and not stopped():
        time.sleep(POLL_S)


CRASH_ENV = "FMSWEEP_TEST_CRASH"
passes: dict[str, int] = {}


def crash_at(point: str) -> None:
    """With FMSWEEP_TEST_CRASH=<point>:<n>, SIGKILL this process the n-th time it passes `point` (a test's launcher
    killed amid its submission: `before-sbatch`, the submission recorded but not run; `after-sbatch`, answered but
    its ids not recorded). Without the variable, one dictionary lookup."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted or wanted.rpartition(":")[0] != point:
        return
    passes[point] = passes.get(point, 0) + 1
    if passes[point] == int(wanted.rpartition(":")[2]):
        os.kill(os.getpid(), signal.SIGKILL)
