"""A plain cancel (SIGTERM without the SIGUSR2 of submitit's requeue): the run saves its last.pt, stops at once and is
recorded `cancelled` (in a sweep), never `completed`; a SIGTERM after a SIGUSR2 (the requeue's own) is left to
submitit. SIGINT stays a stop that is not recorded."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any

import pytest
from conftest import ROOT, Gate, fast_overrides, wait_for
from hydra.types import RunMode
from omegaconf import DictConfig
from test_crash import SignalledSteps
from test_slurm import CPU_SLURM, job_dirs, needs_cluster

import fmsweep.__main__ as entry
from fmsweep import checkpoint, tracking, train
from fmsweep.errors import Interrupted
from fmsweep.results import report
from fmsweep.results.runs import find_runs
from fmsweep.signals import StopRequest
from fmsweep.sweep import summary

PER_EPOCH = 400 // 16  # train steps an epoch: 500 images, 20 % held out for validation, batches of 16
SAVED = "last.pt saved: resume to finish it"


@pytest.fixture
def submitit_handlers() -> Iterator[list[int]]:
    """Handlers where submitit's are in a job: SIGUSR2 (its checkpoint and requeue) and SIGTERM (its bypass), each
    only noting the signal it got and returning, as the bypass does; the list of those signals."""
    got: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        got.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGUSR2, signal.SIGTERM)}
    yield got
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def sweep_job(monkeypatch: pytest.MonkeyPatch, sweep_dir: Path) -> Path:
    """Make fmsweep.__main__.task run as a job of a sweep (Hydra's multirun) in `sweep_dir`; its run dir."""
    run_dir = sweep_dir / "0_job"
    hydra_cfg = SimpleNamespace(
        mode=RunMode.MULTIRUN,
        runtime=SimpleNamespace(output_dir=str(run_dir)),
        sweep=SimpleNamespace(dir=str(sweep_dir)),
    )
    monkeypatch.setattr(entry.HydraConfig, "get", staticmethod(lambda: hydra_cfg))
    monkeypatch.setattr(sys, "argv", ["fmsweep", "-m"])
    return run_dir


def metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json of a run that wrote it."""
    found = tracking.read_metrics(run_dir)
    assert found is not None
    return found


def run_task(cfg: DictConfig, expected_code: int) -> None:
    """Run the sweep job `cfg` through fmsweep.__main__.task, which must exit with `expected_code`."""
    with pytest.raises(SystemExit) as stopped:
        entry.task(cfg)
    assert stopped.value.code == expected_code


def test_a_sigterm_does_not_replace_a_usr2_not_yet_handled() -> None:
    """SIGUSR2 then SIGTERM before the next batch: the requeue is what happens, not a cancel."""
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGUSR2)
        signal.raise_signal(signal.SIGTERM)
        assert stop.signum == signal.SIGUSR2 and stop.requeue_asked


def test_a_sigterm_under_submitits_handlers_stops_the_sweep_job_and_records_it_cancelled(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, submitit_handlers: list[int]
) -> None:
    """A SIGTERM with no SIGUSR2 before it (scancel) in epoch 2: last.pt saved at that batch, the job stops (exit
    143) instead of handing the signal to submitit's bypass, and metrics.json says cancelled and where; the resumed
    job completes and replaces it."""
    run_dir = sweep_job(monkeypatch, tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    cfg = make_cfg("model=fc", "epochs=3", "batch_size=16")
    steps = SignalledSteps(monkeypatch, {PER_EPOCH + 5: signal.SIGTERM})
    run_task(cfg, 128 + signal.SIGTERM)
    assert submitit_handlers == []
    last = checkpoint.load(run_dir / checkpoint.LAST)
    assert (last["epoch"], last["partial"]["next"]) == (1, 5)
    assert tracking.read_metrics(run_dir) == {
        "status": "cancelled",
        "error": f"cancelled by SIGTERM (scancel) in epoch 2 of 3; {SAVED}",
    }
    assert not tracking.completed(run_dir)
    assert entry.task(cfg) == metrics(run_dir)["valid_loss"]
    assert metrics(run_dir)["status"] == "completed" and steps.done == 3 * PER_EPOCH


def test_a_sigterm_after_a_usr2_is_left_to_submitit(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, submitit_handlers: list[int]
) -> None:
    """SIGUSR2 (submitit requeues: here its stand-in returns) and then the requeue's SIGTERM: each saved last.pt
    and went to submitit's handler, which returned; the run trained on and completed."""
    cfg = make_cfg("model=fc", "epochs=2", "batch_size=16")
    SignalledSteps(monkeypatch, {5: signal.SIGUSR2, 10: signal.SIGTERM})
    train.run(cfg, tmp_path)
    assert submitit_handlers == [signal.SIGUSR2, signal.SIGTERM]
    assert metrics(tmp_path)["status"] == "completed"


def test_a_cancel_during_the_final_evaluation_is_not_recorded_completed(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, submitit_handlers: list[int]
) -> None:
    """SIGTERM after the last epoch, while the best model is evaluated on the test split: no completed
    metrics.json, the job stops cancelled; resumed, it only runs the final evaluation."""
    run_dir = sweep_job(monkeypatch, tmp_path)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cfg = make_cfg("model=fc", "epochs=2", "batch_size=16")
    predictions = tracking.Tracker.predictions

    def cancelled_meanwhile(tracker: tracking.Tracker, *args: Any) -> None:
        signal.raise_signal(signal.SIGTERM)
        predictions(tracker, *args)

    monkeypatch.setattr(tracking.Tracker, "predictions", cancelled_meanwhile)
    run_task(cfg, 128 + signal.SIGTERM)
    assert submitit_handlers == []
    assert tracking.read_metrics(run_dir) == {
        "status": "cancelled",
        "error": f"cancelled by SIGTERM after its last epoch (2 of 2), before its final evaluation; {SAVED}",
    }
    monkeypatch.setattr(tracking.Tracker, "predictions", predictions)
    steps = SignalledSteps(monkeypatch, {})
    entry.task(cfg)
    assert metrics(run_dir)["status"] == "completed" and steps.done == 0


def test_ctrl_c_stops_a_sweep_job_resumable_and_records_nothing(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = sweep_job(monkeypatch, tmp_path)
    SignalledSteps(monkeypatch, {PER_EPOCH + 5: signal.SIGINT})
    run_task(make_cfg("model=fc", "epochs=3", "batch_size=16"), 128 + signal.SIGINT)
    assert (run_dir / checkpoint.LAST).is_file() and tracking.read_metrics(run_dir) is None


def test_a_cancel_names_where_each_unfinished_run_of_a_pack_stood(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, submitit_handlers: list[int]
) -> None:
    """On the CPU a pack trains one run after another: cancelled in the second run's epoch 2, the first had
    finished (and keeps its result), the second stands in epoch 2, the third had not started."""
    configs = [make_cfg("model=fc", "epochs=2", "batch_size=16", f"seed={s}") for s in range(3)]
    dirs = [tmp_path / str(s) for s in range(3)]
    SignalledSteps(monkeypatch, {3 * PER_EPOCH + 5: signal.SIGTERM})
    with pytest.raises(Interrupted) as stopped:
        train.run_pack(configs, dirs)
    assert stopped.value.signum == signal.SIGTERM and submitit_handlers == []
    assert stopped.value.stopped == {
        dirs[1]: f"in epoch 2 of 2; {SAVED}",
        dirs[2]: "before its first epoch; resume to run it",
    }
    assert tracking.completed(dirs[0])


@pytest.fixture
def sweep_copy(tiny_sweep: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_sweep, tmp_path / "sweep"))


def test_a_cancelled_job_did_not_complete_for_the_report_and_the_summary(
    sweep_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    jobs = job_dirs(sweep_copy)
    (jobs[1] / "metrics.json").unlink()  # cancelled in its last epoch
    tracking.record_cancelled(jobs[1], signal.SIGTERM, f"in epoch 2 of 2; {SAVED}")
    runs = find_runs(sweep_copy)
    assert [(run.status, run.completed) for run in runs] == [
        ("completed", True),
        ("cancelled", False),
        ("completed", True),
        ("completed", True),
    ]
    markdown, _, _ = report.write_report(sweep_copy)
    assert "4 jobs: 3 completed, 1 cancelled" in markdown
    with pytest.raises(SystemExit) as exited:
        summary.report(sweep_copy, None)
    assert exited.value.code == 1
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == [
        f"fmsweep: 1 job(s) of {sweep_copy} did not complete:",
        f"  {jobs[1].name}: cancelled: cancelled by SIGTERM in epoch 2 of 2; {SAVED}",
    ]


@pytest.mark.slow
def test_a_sigterm_records_every_unfinished_member_of_a_packed_job_cancelled(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    """A sweep of two jobs packed into one, SIGTERM once the first finished an epoch: both are recorded cancelled
    (the second had not started), and the same command resumes and completes them."""
    command = [
        sys.executable,
        "-m",
        "fmsweep",
        "-m",
        *fast_overrides(data_root),
        "model=fc",
        "epochs=3",
        "seed=0,1",
        "pack=2",
        f"hydra.sweep.dir={tmp_path}",
    ]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        held_job(held, proc, tmp_path)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    held.release()
    assert proc.returncode == 128 + signal.SIGTERM, err
    first, second = job_dirs(tmp_path)
    assert metrics(first)["error"].startswith("cancelled by SIGTERM in epoch ")
    assert tracking.read_metrics(second) == {
        "status": "cancelled",
        "error": "cancelled by SIGTERM before its first epoch; resume to run it",
    }
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for job in (first, second):
        assert metrics(job)["status"] == "completed"


def held_job(held: Gate, proc: subprocess.Popen, sweep_dir: Path) -> Path:
    """Hold the jobs of the sweep `proc` launches after their first epoch; the job dir of the first held there. A
    stop signal lets it go (release the gate once the signal took effect, for what runs next)."""
    held.hold(1)
    return sweep_dir / held.wait_held(1, alive=lambda: proc.poll() is None)[0]


def slurm_job_id(sweep_dir: Path) -> str:
    """The id of the one SLURM job launched from `sweep_dir`: the name of its folder in .submitit/."""
    [folder] = [p.name for p in (sweep_dir / ".submitit").iterdir() if p.name.split("_")[0].isdigit()]
    return folder


def squeue_ids() -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout.split()


def sacct_state(job_id: str) -> str:
    """The job's state as accounting has it, once it has one that ended (accounting may lag behind SLURM)."""

    def ended() -> str | None:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True, check=True
        ).stdout.split()
        return out[0] if out and out[0] not in ("PENDING", "RUNNING", "REQUEUED") else None

    wait_for(f"accounting to end job {job_id}", ended, every=0.5)
    state = ended()
    assert state is not None
    return state


@pytest.mark.slurm
@needs_cluster
def test_scancel_stops_a_slurm_job_at_once_and_records_it_cancelled(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    """`scancel <job>` while the job trains: it saves last.pt and ends before SLURM's KillWait (30 s) would SIGKILL
    it, which the record shows (a SIGKILLed job writes none); metrics.json says cancelled with the reason, sacct
    says CANCELLED, and the sweep's summary lists the job as cancelled."""
    args = [*CPU_SLURM, *fast_overrides(data_root), "model=fc", "epochs=3"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fmsweep", "-m", *args, f"hydra.sweep.dir={tmp_path}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job_id = None
    try:
        job = held_job(held, proc, tmp_path)
        job_id = slurm_job_id(tmp_path)
        cancelled = time.time()
        subprocess.run(["scancel", job_id], check=True)
        wait_for("the cancelled job to leave squeue", lambda: job_id not in squeue_ids(), every=0.2)
        gone_s = time.time() - cancelled
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
        if job_id is not None:
            subprocess.run(["scancel", job_id])  # no-op once the job ended
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["status"] == "cancelled", metrics
    assert metrics["error"].startswith("cancelled by SIGTERM (scancel) in epoch ")
    assert metrics["error"].endswith(" of 3; last.pt saved: resume to finish it")
    assert (job / checkpoint.LAST).is_file()
    assert sacct_state(job_id) == "CANCELLED"
    assert proc.returncode == 1, err[-3000:]
    assert f"{job.name}: cancelled: cancelled by SIGTERM" in err
    print(f"\nscancelled job left squeue {gone_s:.1f} s after the scancel")


@pytest.mark.slow
def test_a_sigterm_at_a_jobs_start_is_a_cancel_not_swallowed_by_submitit(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    """A submitit job gets SIGTERM at its start, before its run's stop handlers exist (submitit's own bypass one
    is there): it stops there, recorded cancelled, and trains nothing."""
    command = [
        sys.executable,
        "-m",
        "fmsweep",
        "-m",
        "hydra/launcher=submitit_local",
        *fast_overrides(data_root),
        "model=fc",
        "epochs=2",
        f"hydra.sweep.dir={tmp_path}",
    ]
    held.hold(0)  # the job waits at its start
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        [name] = held.wait_held(0, alive=lambda: proc.poll() is None)
        job = json.loads((tmp_path / "sweep.json").read_text())["jobs"][0]
        os.kill(int(job["launcher_job"]), signal.SIGTERM)  # the job's process, as scancel signals it
        wait_for("the job recorded cancelled", lambda: tracking.read_metrics(tmp_path / name) is not None, timeout=120)
        held.release()
        proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert metrics(tmp_path / name)["status"] == "cancelled"
    assert metrics(tmp_path / name)["error"].startswith("cancelled by SIGTERM before its first epoch")
    assert not checkpoint.saved_epoch(tmp_path / name / checkpoint.LAST)  # no epoch trained
