"""Nothing lost, nothing half-written: stop signals, SIGKILL at random moments, NaN losses, full disks."""

import csv
import errno
import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from conftest import ROOT, Gate, fast_overrides, wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fmsweep import checkpoint, train
from fmsweep.errors import Interrupted, TrainingDiverged, UserError


def final_state(run_dir: Path) -> tuple[dict, dict]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("train_seconds")
    return metrics, checkpoint.load(run_dir / checkpoint.LAST)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# The tolerances of two trainings that differ only in float32 rounding: a stacked (vmapped) step against a module's
# own, a pack against a smaller one. Rounding differs with the CPU's kernels (ATEN_CPU_CAPABILITY), the thread count
# and the load, and training amplifies it: Adam turns it into an lr-sized step wherever a gradient is near zero (it
# divides by sqrt(v)) or a ReLU or max-pool tie flips. Hence no elementwise bound: a state dict is compared as one
# vector in relative norm (such a step in a BatchNorm bias of 4 elements is a few per cent of that tensor, 1e-5 of
# the net), losses relative, accuracies in images.
# Measured on tests/test_pack.py's comparisons under ATEN_CPU_CAPABILITY default, avx2, avx512 x OMP_NUM_THREADS 1, 2
# and with both cores busy, and on 63 more members of its stacked CNN packs and 48 of its MLP packs (seeds 0 to 23):
# - weights: rounding at most 5.4e-5 (the CNN's members; the MLP's 8.4e-6, the stacked steps' 4.3e-8). A member that
#   had another's dropout stream at least 3.7e-3 apart, another's data order 6.1e-3, another's lr 1.0e-2 (the CNN's;
#   the MLP's at least 3.1e-2; after 4 stacked steps at least 1.0e-2). The bound: 9 times the one, a 7th of the other.
# - losses (and lr): rounding at most 3.5e-6; another's data order or dropout stream at least 5.2e-4 (an lr shows in
#   the history's lr; after 4 stacked steps at least 1.5e-3). The bound: 14 times the one, a 10th of the other.
# - accuracies: a prediction flips where an image's two top logits are closer than the rounding: none measured at
#   these lrs, one test image where rounding had grown to 1e-2 (Adam at 1e-3 on the CNN). The weights and losses tell
#   a mix-up (it moves accuracies by 0.01 to 0.06), so one image of the 100 validation images may differ.
CLOSE_WEIGHTS = 5e-4
CLOSE_LOSSES = 5e-5
CLOSE_ACCURACY = 0.01


def relative_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||b - a|| / ||a||, Euclidean over all elements, in float64 (0 where both are zero)."""
    a, b = a.double(), b.double()
    distance, size = torch.linalg.vector_norm(b - a).item(), torch.linalg.vector_norm(a).item()
    if not distance:
        return 0.0
    return distance / size if size else math.inf


def assert_close_weights(a: dict, b: dict) -> None:
    """Two state dicts equal within float32 rounding as training amplifies it: their float tensors, as one vector,
    within CLOSE_WEIGHTS in relative norm; integer ones (BatchNorm's num_batches_tracked) equal."""
    assert a.keys() == b.keys()
    floats = [key for key in a if a[key].is_floating_point()]
    assert all(torch.equal(a[key], b[key]) for key in a.keys() - floats)
    distance = relative_distance(*(torch.cat([state[key].flatten() for key in floats]) for state in (a, b)))
    assert distance <= CLOSE_WEIGHTS, f"weights {distance:.1e} apart in relative norm"


def assert_close_numbers(a: dict, b: dict) -> None:
    """A run's metrics or a history row, `b` against `a`: accuracies (`*_acc`) within CLOSE_ACCURACY, the other
    floats (losses, lr) within CLOSE_LOSSES relative, everything else equal."""
    assert a.keys() == b.keys()
    for key, value in a.items():
        if key.endswith("_acc"):
            assert abs(b[key] - value) <= CLOSE_ACCURACY, f"{key}: {b[key]} against {value}"
        elif isinstance(value, float):
            assert abs(b[key] - value) <= CLOSE_LOSSES * abs(value), f"{key}: {b[key]} against {value}"
        else:
            assert b[key] == value, f"{key}: {b[key]} against {value}"


def read_history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def scalar_steps(run_dir: Path, tag: str) -> list[int]:
    events = EventAccumulator(str(run_dir)).Reload()
    return [e.step for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def assert_same_result(a: Path, b: Path) -> None:
    """Two finished run dirs hold the same results (bitwise weights, equal metrics), each written once."""
    (metrics_a, weights_a), (metrics_b, weights_b) = final_state(a), final_state(b)
    assert metrics_a == metrics_b
    assert_same_weights(weights_a, weights_b)
    assert_same_weights(
        checkpoint.load(a / checkpoint.BEST)["state_dict"], checkpoint.load(b / checkpoint.BEST)["state_dict"]
    )
    drop_seconds = lambda rows: [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in rows]  # noqa: E731
    assert drop_seconds(read_history(a)) == drop_seconds(read_history(b))
    epochs = list(range(1, metrics_b["epochs_run"] + 1))
    assert scalar_steps(b, "valid/loss") == scalar_steps(b, "train/acc") == epochs  # every epoch exactly once
    assert scalar_steps(b, "test/acc") == [metrics_b["best_epoch"]]
    assert len(list(b.glob("events.out.tfevents.*"))) == 1


def assert_close_records(a: Path, b: Path) -> None:
    """The metrics and every epoch's history row of two finished run dirs agree by assert_close_numbers."""
    assert_close_numbers(final_state(a)[0], final_state(b)[0])
    rows_a, rows_b = (
        [{k: float(v) for k, v in row.items() if k != "epoch_seconds"} for row in read_history(d)] for d in (a, b)
    )
    assert len(rows_a) == len(rows_b)
    for row_a, row_b in zip(rows_a, rows_b):
        assert_close_numbers(row_a, row_b)


def assert_close_result(a: Path, b: Path) -> None:
    """Two finished run dirs hold the same results within float32 rounding: weights of the last and the best
    epoch, every epoch's history row, the metrics; each epoch written once."""
    (_, weights_a), (metrics_b, weights_b) = final_state(a), final_state(b)
    assert_close_records(a, b)
    assert_close_weights(weights_a, weights_b)
    assert_close_weights(
        checkpoint.load(a / checkpoint.BEST)["state_dict"], checkpoint.load(b / checkpoint.BEST)["state_dict"]
    )
    assert scalar_steps(b, "valid/loss") == list(range(1, metrics_b["epochs_run"] + 1))


class SignalledSteps:
    """From now on, count the train steps and raise a stop signal right after chosen ones, inside the step, while
    the run's handler is installed: `plan` maps a step's number (from 1, across attempts) to the signal."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, plan: Mapping[int, int]) -> None:
        self.done = 0
        call = train.PackStep.__call__

        def step(packstep: train.PackStep, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = call(packstep, x, y)
            self.done += 1
            if self.done in plan:
                signal.raise_signal(plan[self.done])  # delivered to this thread before raise_signal returns
            return out

        monkeypatch.setattr(train.PackStep, "__call__", step)


def assert_consistent(run_dir: Path) -> None:
    """Every file of the run dir is complete and none claims more than last.pt holds: history.csv, best_model.pt,
    metrics.json and TensorBoard hold at most the epochs last.pt holds, with its values, each epoch once."""
    last = checkpoint.load(run_dir / checkpoint.LAST) if (run_dir / checkpoint.LAST).exists() else None
    history = last["history"] if last else []
    assert [row["epoch"] for row in history] == list(range(1, (last["epoch"] if last else 0) + 1))
    if (run_dir / "history.csv").exists():
        rows = read_history(run_dir)
        assert len(rows) <= len(history)
        assert [{k: float(v) for k, v in row.items()} for row in rows] == history[: len(rows)]
    if (run_dir / checkpoint.BEST).exists():
        best = checkpoint.load(run_dir / checkpoint.BEST)
        assert last is not None and 1 <= best["epoch"] <= last["best_epoch"]
        assert best["metrics"] == history[best["epoch"] - 1]
        if best["epoch"] == last["best_epoch"]:
            assert_same_weights(best["state_dict"], last["best_state"])
    if (run_dir / "metrics.json").exists():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "failed" or metrics["epochs_run"] <= len(history)
    events = EventAccumulator(str(run_dir)).Reload()
    for tag in ("train/loss", "valid/loss", "valid/acc", "lr"):
        if tag in events.Tags()["scalars"]:
            points = events.Scalars(tag)
            assert [p.step for p in points] == list(range(1, len(points) + 1)) and len(points) <= len(history)
            key = tag.replace("/", "_")
            assert [p.value for p in points] == pytest.approx([row[key] for row in history[: len(points)]], rel=1e-6)


def test_stop_signals_at_chosen_batches_resume_bitwise(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupt a run with SIGINT/SIGTERM at chosen batches (the first of the run, the last and first of an
    epoch, mid-epoch, the last of the run); each attempt saves where it stopped, the resumed run ends bitwise
    equal to an uninterrupted one. The signal is raised inside the train step, while the handler is installed."""
    cfg = make_cfg("model=fc", "reg=dropout", "aug=flip_affine", "epochs=4", "batch_size=16")
    train.run(cfg, tmp_path / "straight")
    per_epoch = 400 // 16  # 500 images, 20 % of them held out for validation
    plan = {1: signal.SIGINT, 25: signal.SIGTERM, 26: signal.SIGINT, 60: signal.SIGTERM, 100: signal.SIGINT}
    steps = SignalledSteps(monkeypatch, plan)
    stops = []
    while True:
        try:
            train.run(cfg, tmp_path / "resumed")
            break
        except Interrupted as exc:
            last = checkpoint.load(tmp_path / "resumed" / checkpoint.LAST)
            stops.append((exc.signum, last["epoch"], last["partial"]["next"]))
            assert_consistent(tmp_path / "resumed")
    assert steps.done == 4 * per_epoch  # no batch trained twice
    assert stops == [(sig, (n - 1) // per_epoch, n - (n - 1) // per_epoch * per_epoch) for n, sig in plan.items()]
    assert_same_result(tmp_path / "straight", tmp_path / "resumed")


def interrupt_after_first_epoch(command: list[str], held: Gate, sig: signal.Signals) -> str:
    """Start `command`, send `sig` once its run waits at the gate after epoch 1 (its handler is installed by then);
    its stderr. Then the gate is released: what runs next runs to its end."""
    held.hold(1)
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    held.wait_held(1, alive=lambda: proc.poll() is None)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    held.release()
    assert proc.returncode == 128 + sig, err
    return err


def resume_command(err: str) -> list[str]:
    """The resume command a stopped run printed, to run here: `python -m fmsweep ...` for a run, `fmsweep resume
    DIR` for a sweep (through its module, with this interpreter)."""
    [line] = [line for line in err.splitlines() if line.startswith("fmsweep: stopped by")]
    resume = shlex.split(line.split("resume with: ")[1])
    if resume[:2] == ["fmsweep", "resume"]:
        return [sys.executable, "-m", "fmsweep.cli", *resume[1:]]
    assert resume[:3] == ["python", "-m", "fmsweep"]
    return [sys.executable, *resume[1:]]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_saves_last_exits_128_plus_signum_and_prints_how_to_resume(
    data_root: Path, tmp_path: Path, sig: signal.Signals, held: Gate
) -> None:
    run_dir = tmp_path / "run"
    args = [*fast_overrides(data_root), "model=fc", "epochs=4", f"hydra.run.dir={run_dir}"]
    err = interrupt_after_first_epoch([sys.executable, "-m", "fmsweep", *args], held, sig)
    [line] = err.strip().splitlines()
    assert line.startswith(f"fmsweep: stopped by {sig.name}, {run_dir / checkpoint.LAST} saved; resume with: ")
    assert checkpoint.load(run_dir / checkpoint.LAST)["epoch"] < 4
    assert_consistent(run_dir)
    done = subprocess.run(resume_command(err), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 4
    assert scalar_steps(run_dir, "valid/loss") == list(range(1, 5))


@pytest.mark.slow
def test_an_interrupted_sweep_prints_the_command_that_finishes_it(data_root: Path, tmp_path: Path, held: Gate) -> None:
    args = [*fast_overrides(data_root), "model=fc", "epochs=3", "seed=0,1"]
    first_job = tmp_path / "0_batch_size=32,epochs=3,model=fc,seed=0"
    err = interrupt_after_first_epoch(
        [sys.executable, "-m", "fmsweep", "-m", *args, f"hydra.sweep.dir={tmp_path}"], held, signal.SIGINT
    )
    resume = resume_command(err)
    assert resume[-3:] == ["fmsweep.cli", "resume", str(tmp_path)]
    assert not (tmp_path / "1_batch_size=32,epochs=3,model=fc,seed=1").exists()  # the sweep stopped there
    done = subprocess.run(resume, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    jobs = sorted(p for p in tmp_path.iterdir() if (p / ".hydra").is_dir())
    assert [p.name for p in jobs] == [first_job.name, "1_batch_size=32,epochs=3,model=fc,seed=1"]
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["epochs_run"] == 3
        assert scalar_steps(job, "valid/loss") == list(range(1, 4))
    assert "Resuming from" in (first_job / "__main__.log").read_text()


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_only_consistent_files(data_root: Path, tmp_path: Path, held: Gate) -> None:
    """Kill a training process (SIGKILL) at random moments, restart it each time in the same dir: at every kill
    the run dir is consistent with its last.pt, and the final result equals that of an uninterrupted run.

    Each attempt may commit two epochs, then the gate holds it: once it committed the first, it is killed at a
    random moment of the second epoch, its checkpoint writes, or the wait after them; never after the run ended."""
    attempts = 8
    args = [*fast_overrides(data_root), "model=vanilla_cnn", f"epochs={2 * attempts + 1}", "batch_size=16"]
    command = [sys.executable, "-m", "fmsweep", *args]
    subprocess.run([*command, f"hydra.run.dir={tmp_path / 'straight'}"], cwd=ROOT, check=True, capture_output=True)
    epoch_seconds = max(float(r["epoch_seconds"]) for r in read_history(tmp_path / "straight"))
    last = tmp_path / "killed" / checkpoint.LAST
    rng = random.Random(1)
    for _ in range(attempts):
        start = checkpoint.load(last)["epoch"] if last.exists() else 0
        before = last.stat().st_mtime_ns if last.exists() else 0
        held.hold(start + 2)
        proc = subprocess.Popen(
            [*command, f"hydra.run.dir={tmp_path / 'killed'}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # a new last.pt (written whole, by rename) is the attempt's first epoch committed
        wait_for(
            "the attempt's first epoch",
            lambda: proc.poll() is not None or ((last.stat().st_mtime_ns if last.exists() else 0) != before),  # noqa: B023 (called only in this iteration)
            every=0.01,
        )
        time.sleep(rng.uniform(0, 1.5 * epoch_seconds))  # the kill's random moment; the gate keeps the run alive
        assert proc.poll() is None, "the attempt ended before its kill"
        proc.kill()
        proc.wait()
        assert_consistent(tmp_path / "killed")
    held.release()
    done = subprocess.run([*command, f"hydra.run.dir={tmp_path / 'killed'}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same_result(tmp_path / "straight", tmp_path / "killed")
    print(f"\n{attempts} SIGKILLs survived, nothing inconsistent, final result bitwise equal")


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_the_best(make_cfg, tmp_path: Path) -> None:
    train.run(make_cfg("model=fc", "optimizer=sgd", "epochs=2"), tmp_path)
    best_before = (tmp_path / checkpoint.BEST).read_bytes()
    with pytest.raises(
        TrainingDiverged, match=r"epoch 3, batch \d+/\d+"
    ):  # SGD, unlike Adam, follows the huge gradient
        train.run(make_cfg("model=fc", "optimizer=sgd", "epochs=3", "reg.l2=1e38"), tmp_path)
    assert (tmp_path / checkpoint.BEST).read_bytes() == best_before
    assert checkpoint.load(tmp_path / checkpoint.LAST)["epoch"] == 2
    assert_consistent(tmp_path)


def test_nan_loss_on_the_command_line_is_one_line_and_a_failed_status(data_root: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fmsweep",
            *fast_overrides(data_root),
            "model=fc",
            "optimizer=sgd",
            "optimizer.lr=1e30",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fmsweep: error: training diverged") and "epoch 1, batch" in lines[0]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "diverged" in metrics["error"]


def test_full_disk_is_a_clear_error_and_no_file_runs_ahead_of_last(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train.run(make_cfg("model=linear", "epochs=1"), tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    fsync = os.fsync

    def full_for_last(fd: int) -> None:  # every write of last.pt fails with ENOSPC when it reaches the disk
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{checkpoint.LAST}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", full_for_last)
        with pytest.raises(
            UserError, match=r"cannot write .*last\.pt: No space left on device; the previous last\.pt is intact"
        ):
            train.run(make_cfg("model=linear", "epochs=2"), tmp_path)
    # epoch 2 trained, but last.pt could not take it: every file still says epoch 1
    assert checkpoint.load(tmp_path / checkpoint.LAST)["epoch"] == 1
    for name in (checkpoint.LAST, checkpoint.BEST, "history.csv", "summary.txt", "metrics.json"):
        assert (tmp_path / name).read_bytes() == before[name], name
    assert [int(row["epoch"]) for row in read_history(tmp_path)] == [1]
    assert checkpoint.load(tmp_path / checkpoint.BEST)["epoch"] == 1
    assert scalar_steps(tmp_path, "valid/loss") == [1] and scalar_steps(tmp_path, "test/acc") == [1]  # the 1-epoch run
    assert_consistent(tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))  # the failed write removed its temporary file: space again
    train.run(make_cfg("model=linear", "epochs=2"), tmp_path)
    train.run(make_cfg("model=linear", "epochs=2"), tmp_path / "straight")
    assert_same_result(tmp_path / "straight", tmp_path)


def count_writes(make_cfg, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many files a 3-epoch run writes (atomic writes end in os.replace)."""
    replace, writes = os.replace, 0

    def counting(src: str, dst: str) -> None:
        nonlocal writes
        writes += 1
        replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", counting)
        train.run(make_cfg("model=fc", "aug=flip_affine", "epochs=3"), run_dir)
    return writes


def test_a_failure_at_any_write_leaves_a_consistent_dir_and_the_resume_writes_everything_once(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail each file write of a run in turn (as a full disk would); the run dir stays consistent with last.pt,
    and resuming ends with the files of an uninterrupted run, each epoch in them once."""
    writes = count_writes(make_cfg, tmp_path / "straight", monkeypatch)
    assert writes >= 10  # summary, history, and per epoch last.pt, history (best_model.pt when better), metrics
    cfg = make_cfg("model=fc", "aug=flip_affine", "epochs=3")
    for failing in range(1, writes + 1):
        run_dir, seen = tmp_path / f"fail-{failing}", 0

        def full_disk(src: str, dst: str) -> None:
            nonlocal seen
            seen += 1
            if seen == failing:  # noqa: B023 (called only in this iteration, under its monkeypatch.context)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.rename(src, dst)

        with monkeypatch.context() as patch:
            patch.setattr(os, "replace", full_disk)
            with pytest.raises(UserError, match="No space left on device"):
                train.run(cfg, run_dir)
        assert_consistent(run_dir)
        assert not list(run_dir.glob(".*.tmp"))
        train.run(cfg, run_dir)
        assert_same_result(tmp_path / "straight", run_dir)
