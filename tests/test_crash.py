"""Nothing lost, nothing half-written: stop signals, SIGKILL at random moments, NaN losses, full disks."""
import csv
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, fast_overrides

from fmsweep import checkpoint, train
from fmsweep.errors import Interrupted, TrainingDiverged, UserError


def final_state(run_dir: Path) -> tuple[dict, dict]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("train_seconds")
    return metrics, checkpoint.load(run_dir / checkpoint.LAST)["state_dict"]


def assert_same_result(a: Path, b: Path) -> None:
    (metrics_a, weights_a), (metrics_b, weights_b) = final_state(a), final_state(b)
    assert metrics_a == metrics_b
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def assert_files_complete(run_dir: Path) -> None:
    """Every result file present parses completely (hidden .*.tmp files are unfinished writes, never results)."""
    for name in (checkpoint.BEST, checkpoint.LAST):
        if (run_dir / name).exists():
            checkpoint.load(run_dir / name)
    if (run_dir / "metrics.json").exists():
        json.loads((run_dir / "metrics.json").read_text())
    if (run_dir / "history.csv").exists():
        with open(run_dir / "history.csv") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
        assert all(r["epoch_seconds"] for r in rows)


def test_stop_signals_at_random_batches_resume_bitwise(make_cfg, tmp_path: Path) -> None:
    """Interrupt a run several times mid-epoch (SIGINT/SIGTERM); the resumed run ends bitwise equal."""
    cfg = make_cfg("model=fc", "reg=dropout", "aug=flip_affine", "epochs=6", "batch_size=16")
    t0 = time.perf_counter()
    train.run(cfg, tmp_path / "straight")
    duration = time.perf_counter() - t0
    rng = random.Random(0)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}  # late ones: ignored
    interruptions = 0
    try:
        while True:
            sig = rng.choice([signal.SIGINT, signal.SIGTERM])
            timer = threading.Timer(rng.uniform(0.1, 0.25) * duration, os.kill, (os.getpid(), sig))
            timer.start()
            try:
                train.run(cfg, tmp_path / "resumed")
                break
            except Interrupted as exc:
                assert exc.signum == sig
                interruptions += 1
                assert_files_complete(tmp_path / "resumed")
            finally:
                timer.cancel()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert interruptions >= 3
    assert_same_result(tmp_path / "straight", tmp_path / "resumed")


def test_sigterm_saves_last_and_prints_how_to_resume(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*fast_overrides(data_root), "model=fc", "epochs=15", "batch_size=8", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "fmsweep", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / checkpoint.LAST).exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    [line] = err.strip().splitlines()
    assert line.startswith("fmsweep: stopped by SIGTERM") and "resume with: " in line
    last = checkpoint.load(run_dir / checkpoint.LAST)
    assert last["epoch"] < 15
    resume = shlex.split(line.split("resume with: ")[1])
    assert resume[:3] == ["python", "-m", "fmsweep"]
    done = subprocess.run([sys.executable, *resume[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 15


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_only_complete_files(data_root: Path, tmp_path: Path) -> None:
    """Kill a training process (SIGKILL) at random moments, restart it each time in the same dir: every file
    is complete at every kill, and the final result equals that of an uninterrupted run."""
    args = [*fast_overrides(data_root), "model=vanilla_cnn", "epochs=16", "batch_size=16"]
    command = [sys.executable, "-m", "fmsweep", *args]
    subprocess.run([*command, f"hydra.run.dir={tmp_path / 'straight'}"], cwd=ROOT, check=True, capture_output=True)
    with open(tmp_path / "straight" / "history.csv") as f:
        epoch_seconds = max(float(r["epoch_seconds"]) for r in csv.DictReader(f))
    last = tmp_path / "killed" / checkpoint.LAST
    rng = random.Random(1)
    kills = 0
    for _ in range(12):
        before = last.stat().st_mtime_ns if last.exists() else 0
        proc = subprocess.Popen([*command, f"hydra.run.dir={tmp_path / 'killed'}"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and (last.stat().st_mtime_ns if last.exists() else 0) == before:
            time.sleep(0.01)  # until this attempt has finished an epoch (or the whole run)
        time.sleep(rng.uniform(0, 1.5 * epoch_seconds))  # then a random moment of the next epoch or its checkpoint
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
        assert_files_complete(tmp_path / "killed")
    done = subprocess.run([*command, f"hydra.run.dir={tmp_path / 'killed'}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert kills >= 6
    assert_same_result(tmp_path / "straight", tmp_path / "killed")
    print(f"\n{kills} SIGKILLs survived, nothing corrupted, final result bitwise equal")


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_the_best(make_cfg, tmp_path: Path) -> None:
    train.run(make_cfg("model=fc", "optimizer=sgd", "epochs=2"), tmp_path)
    best_before = (tmp_path / checkpoint.BEST).read_bytes()
    with pytest.raises(TrainingDiverged, match=r"epoch 3, batch \d+/\d+"):  # SGD, unlike Adam, follows the huge gradient
        train.run(make_cfg("model=fc", "optimizer=sgd", "epochs=3", "reg.l2=1e38"), tmp_path)
    assert (tmp_path / checkpoint.BEST).read_bytes() == best_before
    assert checkpoint.load(tmp_path / checkpoint.LAST)["epoch"] == 2


def test_nan_loss_on_the_command_line_is_one_line_and_a_failed_status(data_root: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fmsweep", *fast_overrides(data_root), "model=fc", "optimizer=sgd",
                           "optimizer.lr=1e30", f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("fmsweep: error: training diverged") and "epoch 1, batch" in line
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "diverged" in metrics["error"]


def test_full_disk_is_a_clear_error_and_keeps_the_previous_files(make_cfg, tmp_path: Path) -> None:
    train.run(make_cfg("model=linear", "epochs=1"), tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in (checkpoint.LAST, "history.csv")}
    (tmp_path / f".{checkpoint.LAST}.tmp").symlink_to("/dev/full")  # every write there fails with ENOSPC
    with pytest.raises(UserError, match=r"cannot write .*last\.pt: No space left on device; the previous last\.pt is intact"):
        train.run(make_cfg("model=linear", "epochs=2"), tmp_path)
    assert (tmp_path / checkpoint.LAST).read_bytes() == before[checkpoint.LAST]
    assert checkpoint.load(tmp_path / checkpoint.LAST)["epoch"] == 1
    assert_files_complete(tmp_path)
