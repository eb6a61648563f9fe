"""fmsweep.sweep.status on fake sweep dirs: each rule of `read`, held run-dir locks (this process's and another's),
stale results of relaunched jobs, SLURM's view from faked squeue/sacct commands (and from the real cluster, marker
`slurm`), pids under submitit_local, `alive`, the table, `fmsweep status` and its --watch."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, TextIO, cast

import pytest
from conftest import needs_cluster, wait_for
from omegaconf import OmegaConf

from fmsweep.errors import UserError
from fmsweep.files import atomic_write
from fmsweep.sweep import grid, lock, space, status
from fmsweep.sweep.manifest import JobRecord, Manifest
from fmsweep.sweep.status import Line, Stale, Status, View

ROOT = Path(__file__).resolve().parents[1]
HEADER = "epoch,train_loss,train_acc,valid_loss,valid_acc,lr,epoch_seconds\n"
# a job dir per letter: p never started, r running (its lock held), c completed, f failed, s stopped, x cancelled,
# u pruned
LETTERS = "prcfsxu"


def start(job_dir: Path) -> None:
    """What Hydra writes as a job starts."""
    (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (job_dir / ".hydra" / "config.yaml").write_text("epochs: 3\n")


def history(job_dir: Path, valid_losses: list[float]) -> None:
    """history.csv of the epochs with these valid losses, each epoch's valid accuracy 1 - its loss."""
    rows = "".join(f"{epoch},0.5,0.8,{loss},{1 - loss:.4f},0.01,1.5\n" for epoch, loss in enumerate(valid_losses, 1))
    atomic_write(job_dir / "history.csv", HEADER + rows)


def metrics(job_dir: Path, **values: object) -> None:
    atomic_write(job_dir / "metrics.json", json.dumps(values))


def completed(job_dir: Path, epochs: int = 3, **values: object) -> None:
    """The metrics.json of a completed run: valid loss 0.3312 and valid acc 88.02 % at its best epoch, 1 (unless
    `values` say otherwise), and test figures, which status does not show."""
    metrics(
        job_dir,
        **{
            "status": "completed",
            "best_epoch": 1,
            "valid_loss": 0.3312,
            "valid_acc": 0.8802,
            "test_loss": 0.3,
            "test_acc": 0.9,
            "epochs_run": epochs,
            **values,
        },
    )


COMPLETED = "completed: valid loss 0.3312, valid acc 88.02 % (best epoch 1 of 3)"  # `completed`'s, 3 epochs


def sweep(sweep_dir: Path, n: int, launcher: str = "basic", epochs: int = 3, **fields: Any) -> Manifest:
    """A recorded sweep of `n` jobs `<i>_lr=<i>` (none started)."""
    jobs = [JobRecord(num=i, name=f"{i}_lr={i}", overrides=[f"lr={i}"], epochs=epochs) for i in range(n)]
    manifest = Manifest(
        sweep_dir=sweep_dir,
        kind="grid",
        launcher=launcher,
        command=["-m", "lr=0,1"],
        cwd=str(sweep_dir),
        jobs=jobs,
        **fields,
    )
    manifest.save()
    return manifest


def set_states(manifest: Manifest, letters: str, held: contextlib.ExitStack) -> None:
    """Make each job's dir show the state its letter (LETTERS) names; `held` holds the running jobs' locks."""
    for job, letter in zip(manifest.jobs, letters, strict=True):
        job_dir = manifest.sweep_dir / job.name
        if letter == "p":
            continue
        start(job_dir)
        history(job_dir, [0.4])
        if letter == "r":
            held.enter_context(lock.hold([job_dir]))
        elif letter == "c":
            completed(job_dir, job.epochs)
        elif letter == "f":
            metrics(job_dir, status="failed", error="ValueError: bad")
        elif letter == "x":
            metrics(job_dir, status="cancelled", reason="cancelled by SIGTERM")
        elif letter == "u":
            metrics(job_dir, status="pruned", pruned=1)


@pytest.fixture
def held() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


@contextlib.contextmanager
def held_by_another_process(run_dir: Path) -> Iterator[subprocess.Popen]:
    """A process holding `run_dir`'s lock as a training run does, until the block ends."""
    code = (
        "import sys\nfrom pathlib import Path\nfrom fmsweep.sweep.lock import hold\n"
        "with hold([Path(sys.argv[1])]):\n    print('held', flush=True)\n    sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def fake_slurm(
    bin_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    squeue: str = "",
    sacct: str = "",
    squeue_rc: int = 0,
    sacct_rc: int = 0,
    stderr: str = "",
) -> Path:
    """squeue and sacct commands first on PATH that print the given output and log their arguments; the log."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    log = bin_dir / "calls.log"
    for name, out, rc in (("squeue", squeue, squeue_rc), ("sacct", sacct, sacct_rc)):
        (bin_dir / f"{name}.out").write_text(out)
        script = bin_dir / name
        script.write_text(
            f'#!/bin/sh\necho "{name} $*" >> {log}\ncat {bin_dir / name}.out\necho "{stderr}" >&2\nexit {rc}\n'
        )
        script.chmod(0o755)
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def texts(manifest: Manifest, stale: Collection[int] = ()) -> list[str]:
    statuses = status.read(manifest, stale)
    return [statuses[job.num].text() for job in manifest.jobs]


def test_read_each_rule_from_the_job_dirs(tmp_path: Path, held: contextlib.ExitStack) -> None:
    manifest = sweep(tmp_path, 13)
    job = [tmp_path / j.name for j in manifest.jobs]
    for d in job[:12]:
        start(d)
    completed(job[0], best_epoch=3, valid_loss=0.29, valid_acc=0.9123)
    metrics(job[1], status="pruned", pruned=2, epochs_run=2)
    history(job[2], [0.35, 0.4])  # its best epoch so far: the first
    held.enter_context(lock.hold([job[2], job[3]]))  # job 3: running, before its first epoch ends
    error = "RuntimeError: CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported " + "x" * 120
    metrics(job[4], status="failed", error=error)
    metrics(job[5], status="cancelled", reason="cancelled by SIGTERM (scancel)")
    manifest.jobs[6].cancelled = True  # fmsweep cancel: the record says it, whatever the dir holds
    history(job[6], [0.4])
    history(job[7], [0.4, 0.3])  # started, not alive, not finished: stopped
    # job 8 started, no history: stopped at epoch 0
    history(job[9], [0.4, 0.4, 0.4])  # completed with 3 epochs of a sweep now asking 5: to be continued
    completed(job[9])
    manifest.jobs[9].epochs = 5
    completed(job[10], best_epoch=1, valid_loss=0.4, valid_acc=0.85, epochs_run=2, stopped_early=2)  # early stop
    (job[11] / "metrics.json").write_text('{"status": "compl')  # a metrics.json that cannot be read: no result
    held.enter_context(lock.hold([job[0]]))  # a run holds its lock while writing metrics.json: completed first
    assert (
        texts(manifest)
        == [
            "completed: valid loss 0.2900, valid acc 91.23 % (best epoch 3 of 3)",  # the figures one chooses on
            "pruned: at epoch 2",
            "running: epoch 2 of 3, best valid loss 0.3500 (epoch 1)",
            "running: starting",
            f"failed: {' '.join(error.split())[: status.ERROR_CHARS]}",
            "cancelled: cancelled by SIGTERM (scancel)",
            "cancelled: by fmsweep cancel",
            "stopped: epoch 2 of 3",
            "stopped: epoch 0 of 3",
            "stopped: epoch 3 of 5",
            "completed: valid loss 0.4000, valid acc 85.00 % (best epoch 1 of 2)",
            "stopped: epoch 0 of 3",
            "pending",  # never started
        ]
    )
    assert not any("test" in text for text in texts(manifest))  # the test split's figures are an outcome
    assert status.alive(manifest) == {0, 2, 3}


def test_a_garbled_history_is_no_error(tmp_path: Path, held: contextlib.ExitStack) -> None:
    manifest = sweep(tmp_path, 2)
    for job in manifest.jobs:
        start(tmp_path / job.name)
        (tmp_path / job.name / "history.csv").write_text(HEADER + "1,0.5,zz\x00,\n2,")
    held.enter_context(lock.hold([tmp_path / manifest.jobs[0].name]))
    assert texts(manifest) == ["running: history.csv unreadable", "stopped: epoch ? of 3"]


def test_a_lock_held_by_another_process_is_a_running_job(tmp_path: Path) -> None:
    manifest = sweep(tmp_path, 1)
    run_dir = tmp_path / manifest.jobs[0].name
    start(run_dir)
    with held_by_another_process(run_dir):
        assert texts(manifest) == ["running: starting"]
        assert status.alive(manifest) == {0}
    assert texts(manifest) == ["stopped: epoch 0 of 3"]  # the process ended without a result: killed, Ctrl-C'd
    assert status.alive(manifest) == set()


def test_locks_are_read_from_proc_locks_without_taking_them(
    tmp_path: Path, held: contextlib.ExitStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taking a lock to test it could make a run that starts at that instant find its dir busy: /proc/locks says
    it without that; where there is no /proc/locks, lock.holder_of decides."""
    manifest = sweep(tmp_path, 3)
    set_states(manifest, "rsp", held)
    (tmp_path / manifest.jobs[1].name / lock.LOCK).touch()  # a lock file that nothing holds

    def no_test_lock(path: Path) -> None:
        raise AssertionError(f"holder_of({path}) called")

    with monkeypatch.context() as patched:
        patched.setattr(lock, "holder_of", no_test_lock)
        assert [s.state for s in status.read(manifest).values()] == ["running", "stopped", "pending"]
    monkeypatch.setattr(status, "PROC_LOCKS", tmp_path / "no-proc-locks")
    assert [s.state for s in status.read(manifest).values()] == ["running", "stopped", "pending"]


def test_stale_results_of_relaunched_jobs_wait_for_their_new_launch(tmp_path: Path, held: contextlib.ExitStack) -> None:
    manifest = sweep(tmp_path, 6)
    set_states(manifest, "fxssc" + "p", held)
    manifest.jobs[2].cancelled = True
    manifest.save()
    before = [
        "failed: ValueError: bad",
        "cancelled: cancelled by SIGTERM",
        "cancelled: by fmsweep cancel",
        "stopped: epoch 1 of 3",
        COMPLETED,
        "pending",
    ]
    assert texts(manifest) == before
    launched = ["pending"] * 4 + [COMPLETED, "pending"]  # a completed result stands
    assert texts(manifest, stale=range(6)) == launched
    stale = Stale(manifest, range(6))
    assert len(stale) == 6 and 3 in stale and 6 not in stale
    dirs = [tmp_path / job.name for job in manifest.jobs]
    start(dirs[0])  # Hydra rewrites .hydra/ as the job starts; the run takes its lock only after its imports
    start(dirs[5])
    assert texts(manifest, stale) == launched
    with lock.hold([dirs[0]]):  # the run took its lock: it runs, and its outcome is this launch's
        assert texts(manifest, stale)[0] == "running: epoch 1 of 3, best valid loss 0.4000 (epoch 1)"
    metrics(dirs[1], status="failed", error="OSError: disk full")  # a new result
    manifest.jobs[3].launcher_job = "4242"  # a new launcher job
    assert texts(manifest, stale) == [
        "failed: ValueError: bad",  # its run ended without a new result: killed
        "failed: OSError: disk full",
        "pending",
        "stopped: epoch 1 of 3",
        COMPLETED,
        "pending",
    ]


def test_slurm_state_from_one_squeue_and_one_sacct_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = ["40_0", "40_1", "40_2", "40_3", "41", "41", "42", "43", "44", "45", "46", None, "47", "48"]
    manifest = sweep(tmp_path / "sweep", len(ids), launcher="slurm", detach=True, finish_job="49")
    for job, job_id in zip(manifest.jobs, ids):
        job.launcher_job = job_id
    manifest.jobs[4].pack = manifest.jobs[5].pack = "packs/4-5"
    manifest.save()
    dirs = [manifest.sweep_dir / job.name for job in manifest.jobs]
    for i in (3, 4, 5, 8, 9, 13):
        start(dirs[i])
    history(dirs[4], [0.3])
    history(dirs[8], [0.3, 0.25])
    completed(dirs[3])
    completed(dirs[5])  # its pack still trains the other member
    metrics(dirs[13], status="failed", error="ValueError: bad")
    log = fake_slurm(
        tmp_path / "bin",
        monkeypatch,
        squeue=(
            "40_0|PENDING|Priority\n40_1|RUNNING|None\n40_2|CONFIGURING|None\n40_3|COMPLETING|None\n41|RUNNING|None\n"
            "46|CANCELLED|None\n47|PENDING|None\n49|PENDING|Dependency\n"
        ),
        sacct=(
            "42|CANCELLED by 0|0:0|None\n43|FAILED|1:0|None\n44|TIMEOUT|0:0|None\n45|COMPLETED|0:0|None\n"
            "46|CANCELLED by 1000|0:15|None\n48|FAILED|1:0|None\n"
        ),
    )
    view = status.look(manifest)
    assert [view.statuses[job.num].text() for job in manifest.jobs] == [
        "pending (Priority)",
        "running: starting",
        "running: starting",  # CONFIGURING: not pending, not ended
        COMPLETED,  # metrics.json first: COMPLETING
        "running: epoch 1 of 3, best valid loss 0.3000 (epoch 1)",  # a pack's SLURM job is its members'
        COMPLETED,
        "cancelled: SLURM CANCELLED by 0",
        "failed: SLURM FAILED, exit code 1:0",
        "failed: SLURM TIMEOUT, exit code 0:0",
        "stopped: epoch 0 of 3",  # SLURM's COMPLETED without a result
        "cancelled: SLURM CANCELLED by 1000, exit code 0:15",  # squeue lists an ended job for a while
        "not submitted",  # recorded, no launcher job, no launch under way
        "pending",
        "failed: ValueError: bad",  # metrics.json's error before sacct's
    ]
    assert view.alive == {0, 1, 2, 3, 4, 5, 12} and view.finish == "PENDING (Dependency)" and view.finish_alive
    calls = log.read_text().splitlines()
    assert calls == [
        "squeue -h -r -o %i|%T|%r -j 40_0,40_1,40_2,40_3,41,42,43,44,45,46,47,48,49",
        "sacct -n -P -X -o JobID,State,ExitCode,Reason -j 42,43,44,45,46,48",
    ]
    log.write_text("")
    assert status.alive(manifest) == {0, 1, 2, 3, 4, 5, 12}
    assert log.read_text().startswith("squeue ") and "sacct" not in log.read_text()  # alive needs no accounting


def test_jobs_slurm_forgot_are_asked_of_sacct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """squeue fails on a list of only job ids it no longer knows: that is an answer, and sacct tells the rest."""
    manifest = sweep(tmp_path / "sweep", 1, launcher="slurm")
    manifest.jobs[0].launcher_job = "7"
    manifest.save()
    log = fake_slurm(
        tmp_path / "bin",
        monkeypatch,
        squeue_rc=1,
        stderr="slurm_load_jobs error: Invalid job id specified",
        sacct="7|OUT_OF_MEMORY|0:125|None\n",
    )
    assert texts(manifest) == ["failed: SLURM OUT_OF_MEMORY, exit code 0:125"]
    assert len(log.read_text().splitlines()) == 2


def test_without_slurm_the_files_decide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: contextlib.ExitStack
) -> None:
    """A sweep dir copied to a machine without SLURM's commands: what the files say is all there is."""
    manifest = sweep(tmp_path / "sweep", 4, launcher="slurm", detach=True, finish_job="30")
    for job in manifest.jobs:
        job.launcher_job = str(20 + job.num)
    manifest.save()
    set_states(manifest, "csfp", held)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    view = status.look(manifest)
    assert [s.text() for s in view.statuses.values()] == [
        COMPLETED,
        "stopped: epoch 1 of 3",
        "failed: ValueError: bad",
        "pending",
    ]
    assert view.finish == "unknown (SLURM does not answer)" and view.alive == set() and view.silent is None


SILENT = "slurm_load_jobs error: Socket timed out on send/recv operation"


def silent_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: contextlib.ExitStack) -> Manifest:
    """A detached SLURM sweep of 5 jobs (completed, stopped, failed, pending, never submitted) whose squeue and
    sacct fail as a controller that does not answer makes them fail."""
    manifest = sweep(tmp_path / "sweep", 5, launcher="slurm", detach=True, finish_job="30")
    for job in manifest.jobs[:4]:
        job.launcher_job = str(20 + job.num)
    manifest.save()
    set_states(manifest, "csfpp", held)
    fake_slurm(tmp_path / "bin", monkeypatch, squeue_rc=1, sacct_rc=1, stderr=SILENT)
    return manifest


def test_when_squeue_fails_what_slurm_may_still_run_is_unknown_never_a_guess(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: contextlib.ExitStack
) -> None:
    """The files decide what they can (completed, failed); a submitted job that they show stopped or not started
    may be queued or running for all one knows: unknown, with squeue's answer, and a rerun skips it."""
    manifest = silent_slurm(tmp_path, monkeypatch, held)
    view = status.look(manifest)
    assert [s.text() for s in view.statuses.values()] == [
        COMPLETED,
        f"unknown: squeue: {SILENT}",
        "failed: ValueError: bad",
        f"unknown: squeue: {SILENT}",
        "not submitted",  # nothing can run it
    ]
    assert view.silent == f"squeue: {SILENT}" and view.finish == f"unknown (squeue: {SILENT})"
    assert status.alive(manifest) == {1, 3} and not status.over(view)
    table = status.render(manifest, view)
    assert "5 jobs (slurm): 0 pending, 1 not submitted, 0 running, 1 completed, 1 failed, 2 unknown;" in table
    assert table.rstrip().endswith(
        f"SLURM does not answer (squeue: {SILENT}): 2 jobs unknown, which SLURM may still queue or run; "
        "resume waits for its answer"
    )
    assert "fmsweep resume" not in table


def test_a_rerun_launches_nothing_while_squeue_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: contextlib.ExitStack
) -> None:
    manifest = silent_slurm(tmp_path, monkeypatch, held)
    with pytest.raises(UserError) as refused:
        grid.to_launch(manifest, [OmegaConf.create({"hydra": {"job": {"num": job.num}}}) for job in manifest.jobs])
    assert str(refused.value) == (
        f"SLURM does not answer (squeue: {SILENT}): 2 job(s) of {manifest.sweep_dir} may still be queued or running "
        "(1_lr=1, 3_lr=3); nothing was launched (try again once squeue answers)"
    )


def test_a_copied_sweep_dir_on_a_machine_without_slurm(tmp_path: Path, held: contextlib.ExitStack) -> None:
    manifest = sweep(tmp_path / "sweep", 2, launcher="slurm")
    manifest.jobs[0].launcher_job, manifest.jobs[1].launcher_job = "5", "6"
    manifest.save()
    set_states(manifest, "cs", held)
    copy = tmp_path / "laptop" / "sweep"
    shutil.copytree(manifest.sweep_dir, copy)
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "fmsweep.status", str(copy)],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": str(tmp_path / "empty")},
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.splitlines() == [
        f"2 jobs (slurm): 0 pending, 0 running, 1 completed, 0 failed, 1 stopped; sweep dir {copy}",
        f"lr=0  {COMPLETED}",
        "lr=1  stopped: epoch 1 of 3",
        f"resume the 1 unfinished job with: fmsweep resume {copy}",
    ]


def test_a_live_pid_under_submitit_local_is_a_running_job(tmp_path: Path) -> None:
    manifest = sweep(tmp_path, 2, launcher="submitit_local")
    for job in manifest.jobs:
        start(tmp_path / job.name)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    with subprocess.Popen(["sleep", "3600"]) as live:
        try:
            manifest.jobs[0].launcher_job, manifest.jobs[1].launcher_job = str(live.pid), str(ended.pid)
            assert texts(manifest) == ["running: starting", "stopped: epoch 0 of 3"]
            assert status.alive(manifest) == {0}
        finally:
            live.kill()


def results(sweep_dir: Path) -> None:
    """What fmsweep.results.report and fmsweep.results.ensemble write, as far as the table reads it."""
    (sweep_dir / "report.md").write_text(
        f"# Sweep report: {sweep_dir}\n\n4 jobs: 2 completed\n\n**Best setting on "
        "validation: lr=0, mean valid acc 90.00 % over 1 job.**\n\n## Settings\n"
    )
    (sweep_dir / "ensemble.json").write_text(
        json.dumps({"split": "test", "members": [{}, {}], "average": {"loss": 0.3, "acc": 0.9123, "images": 10}})
    )


def test_the_table(tmp_path: Path, held: contextlib.ExitStack, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = sweep(tmp_path / "sweep", 5, launcher="slurm", detach=True, finish_job="90")
    manifest.jobs[4].launcher_job = "89"
    manifest.save()
    set_states(manifest, "crfsp", held)
    history(manifest.sweep_dir / manifest.jobs[1].name, [0.3, 0.25])
    fake_slurm(tmp_path / "bin", monkeypatch, squeue="89|PENDING|Resources\n90|PENDING|Dependency\n")
    sweep_dir = manifest.sweep_dir
    expected = [
        f"5 jobs (slurm): 1 pending, 1 running, 1 completed, 1 failed, 1 stopped; sweep dir {sweep_dir}",
        f"lr=0  {COMPLETED}",
        "lr=1  running: epoch 2 of 3, best valid loss 0.2500 (epoch 2)",
        "lr=2  failed: ValueError: bad",
        "lr=3  stopped: epoch 1 of 3",
        "lr=4  pending (Resources)",
        "finish job 90 (writes the results): PENDING (Dependency)",
    ]
    assert status.render(manifest, status.look(manifest)).splitlines() == expected
    results(sweep_dir)
    held.close()  # job 1 ends: nothing alive, the stopped jobs can be resumed
    fake_slurm(tmp_path / "bin", monkeypatch, sacct="89|CANCELLED by 0|0:0|None\n90|COMPLETED|0:0|None\n")
    assert status.render(manifest, status.look(manifest)).splitlines() == [
        f"5 jobs (slurm): 0 pending, 0 running, 1 completed, 1 failed, 1 cancelled, 2 stopped; sweep dir {sweep_dir}",
        f"lr=0  {COMPLETED}",
        "lr=1  stopped: epoch 2 of 3",
        "lr=2  failed: ValueError: bad",
        "lr=3  stopped: epoch 1 of 3",
        "lr=4  cancelled: SLURM CANCELLED by 0",
        f"report: {sweep_dir / 'report.md'}: Best setting on validation: lr=0, mean valid acc 90.00 % over 1 job.",
        f"ensemble: {sweep_dir / 'ensemble.json'}: 2 models, test acc 91.23 % (an outcome: the models were chosen "
        "on validation)",
        "finish job 90 (writes the results): COMPLETED",
        f"resume the 4 unfinished jobs with: fmsweep resume {sweep_dir}",
    ]


def test_each_job_is_named_by_the_overrides_it_does_not_share(tmp_path: Path, held: contextlib.ExitStack) -> None:
    """The overrides every job shares are said once, under the counts; each job's line names its own (sorted, as
    its job dir name and the report sort them), not its whole job dir name."""
    jobs = [
        JobRecord(
            num=i,
            name=f"{i}_epochs=3,model=fc,reg={reg},seed={seed}",
            epochs=3,
            overrides=["model=fc", f"reg={reg}", f"seed={seed}", "epochs=3", "data.root=/data"],
        )
        for i, (reg, seed) in enumerate(itertools.product(["none", "l2"], [0, 1]))
    ]
    manifest = Manifest(sweep_dir=tmp_path, kind="grid", launcher="basic", command=["-m"], cwd=str(tmp_path), jobs=jobs)
    manifest.save()
    set_states(manifest, "crps", held)
    assert status.render(manifest, status.look(manifest)).splitlines() == [
        f"4 jobs (basic): 1 pending, 1 running, 1 completed, 0 failed, 1 stopped; sweep dir {tmp_path}",
        "every job: data.root=/data epochs=3 model=fc",
        f"reg=none,seed=0  {COMPLETED}",
        "reg=none,seed=1  running: epoch 1 of 3, best valid loss 0.4000 (epoch 1)",
        "reg=l2,seed=0    pending",
        "reg=l2,seed=1    stopped: epoch 1 of 3",
    ]


def test_a_lone_job_is_named_by_all_its_overrides_and_twins_by_none(tmp_path: Path) -> None:
    manifest = sweep(tmp_path, 1)
    manifest.jobs[0].overrides = ["seed=1", "epochs=3"]
    pending = Status("pending")
    assert status.named(manifest, {0: pending}) == ([], [Line(0, "epochs=3,seed=1", pending)])
    twins = sweep(tmp_path, 2)
    for job in twins.jobs:
        job.overrides = ["seed=1"]  # `seed=1,1`: Hydra runs it twice
    assert status.named(twins, {0: pending, 1: pending}) == (
        ["every job: seed=1"],
        [Line(0, "(shared overrides only)", pending), Line(1, "(shared overrides only)", pending)],
    )


def test_a_search_shows_its_objective_first_and_its_values_as_the_report_does(
    tmp_path: Path, held: contextlib.ExitStack
) -> None:
    """A search chosen on valid accuracy: a trial's line gives its valid accuracy first, running or completed; a
    sampled float is shown to 4 significant digits, as the report and the trial's job dir name show it."""
    lrs = [0.006431172050131994, 0.0001234]
    jobs = [
        JobRecord(
            num=i, name=f"{i}_model=fc,optimizer.lr={lr:.4g}", overrides=["model=fc", f"optimizer.lr={lr!r}"], epochs=3
        )
        for i, lr in enumerate(lrs)
    ]
    manifest = Manifest(
        sweep_dir=tmp_path, kind="search", launcher="basic", command=["-m"], cwd=str(tmp_path), jobs=jobs, trials=3
    )
    manifest.save()
    set_states(manifest, "cr", held)
    hydra_yaml = tmp_path / jobs[0].name / ".hydra" / "hydra.yaml"
    hydra_yaml.write_text("hydra:\n  sweeper:\n    _target_: SearchSweeper\n    objective: valid_acc\n")
    assert status.render(manifest, status.look(manifest)).splitlines()[1:] == [
        "every trial: model=fc",
        "optimizer.lr=0.006431   completed: valid acc 88.02 %, valid loss 0.3312 (best epoch 1 of 3)",
        "optimizer.lr=0.0001234  running: epoch 1 of 3, best valid acc 60.00 % (epoch 1)",
    ]
    assert status.objective(manifest) == "valid_acc"
    hydra_yaml.write_text("hydra: {sweeper: {objective: valid_acc")  # half written: the default, no error
    assert status.objective(manifest) == "valid_loss"
    hydra_yaml.unlink()
    assert status.objective(manifest) == "valid_loss"


@pytest.mark.parametrize(
    "override",
    [
        "optimizer.lr=0.006431172050131994",
        "reg.l2=1.2345678e-05",
        "+reg.l2=0.00012345678",
        "x=-2.5000001e+10",
        "x=.5000001",
        "x=3.000000001",
        "x=1234567.0",
        "x=10.",
        "lr=1e-3",
        "lr=0.1",
        "epochs=5",
        "x=inf",
        "model=fc",
        "data.root=/a/b-1.5555555",
        "name='0.123456789'",
        "hidden=[256,128]",
    ],
)
def test_values_are_shown_as_the_report_shows_them(override: str) -> None:
    """status.display writes values as space.display_overrides does, without Hydra's parser."""
    assert status.display(override) == space.display_overrides([override])[0]


def test_counts_name_the_rarer_states_only_when_there_are_any() -> None:
    assert status.counts(["pending", "running", "pending"]) == "2 pending, 1 running, 0 completed, 0 failed"
    assert status.counts(["stopped", "pruned", "cancelled"]) == (
        "0 pending, 0 running, 0 completed, 1 pruned, 0 failed, 1 cancelled, 1 stopped"
    )
    assert Status("pending", "Priority").text() == "pending (Priority)"
    assert Status("running", "epoch 1 of 3").text(progress=False) == "running"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{tmp}/nothing"], "{tmp}/nothing is not a directory (expected an fmsweep sweep dir)"),
        (["{tmp}"], "{tmp} holds no sweep.json: not an fmsweep sweep dir (or one made before sweeps were recorded)"),
        ([], "fmsweep status: the following arguments are required: DIR"),
        (["{tmp}", "--interval", "0"], "fmsweep status: --interval must be > 0, got 0.0"),
        (["{tmp}", "--wtach"], "fmsweep status: unrecognized arguments: --wtach"),
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        status.main([arg.format(tmp=tmp_path) for arg in argv])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"fmsweep: error: {message.format(tmp=tmp_path)}\n"


def test_a_broken_sweep_record_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "sweep.json").write_text('{"format": 1, "jobs": [')
    with pytest.raises(SystemExit) as exit_info:
        status.main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"fmsweep: error: cannot read {tmp_path / 'sweep.json'}: ")


def test_main_prints_the_table(tmp_path: Path, held: contextlib.ExitStack, capsys: pytest.CaptureFixture) -> None:
    manifest = sweep(tmp_path, 2)
    set_states(manifest, "cp", held)
    status.main([str(tmp_path)])
    completed_status = Status(*COMPLETED.split(": ", 1))
    assert capsys.readouterr().out == status.render(manifest, View({0: completed_status, 1: Status("pending")}, set()))


def test_watch_follows_the_sweep_until_nothing_is_alive(tmp_path: Path, held: contextlib.ExitStack) -> None:
    manifest = sweep(tmp_path, 2)
    set_states(manifest, "cp", held)
    running = tmp_path / manifest.jobs[1].name
    start(running)
    with held_by_another_process(running):
        watch = subprocess.Popen(
            [sys.executable, "-m", "fmsweep.status", str(tmp_path), "--watch", "--interval", "0.05"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert watch.stdout is not None
        first = [watch.stdout.readline() for _ in range(3)]
        assert first[0] == f"2 jobs (basic): 0 pending, 1 running, 1 completed, 0 failed; sweep dir {tmp_path}\n"
        time.sleep(0.2)
        assert watch.poll() is None  # a job runs: the watch goes on
        history(running, [0.4, 0.3, 0.25])
        completed(running, best_epoch=3, valid_loss=0.25, valid_acc=0.93)
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0 and err == ""
    assert out.splitlines() == [
        "fmsweep: lr=1 completed: valid loss 0.2500, valid acc 93.00 % (best epoch 3 of 3) (0 pending, 0 running, "
        "2 completed, 0 failed)",
        f"2 jobs (basic): 0 pending, 0 running, 2 completed, 0 failed; sweep dir {tmp_path}",
        f"lr=0  {COMPLETED}",
        "lr=1  completed: valid loss 0.2500, valid acc 93.00 % (best epoch 3 of 3)",
    ]


def test_watch_exits_1_when_a_job_did_not_complete(tmp_path: Path, held: contextlib.ExitStack) -> None:
    manifest = sweep(tmp_path, 3)
    set_states(manifest, "cus", held)
    proc = subprocess.run(
        [sys.executable, "-m", "fmsweep.status", str(tmp_path), "--watch"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1  # job 2 stopped
    assert proc.stdout == status.render(manifest, status.look(manifest))  # over at once: the table once


def test_watch_on_a_terminal_is_one_block_never_taller_than_it(
    tmp_path: Path, held: contextlib.ExitStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Terminal(list):
        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> None:
            self.append(text)

        def flush(self) -> None:
            pass

    manifest = sweep(tmp_path, 12)
    set_states(manifest, "ccccccfccccc", held)
    results(tmp_path)
    monkeypatch.setattr(status.shutil, "get_terminal_size", lambda: os.terminal_size((60, 8)))
    out = Terminal()
    assert status.watch(manifest, cast(TextIO, out), 0.01) == 1
    lines = re.sub(r"\x1b\[(\d+F|2K|J)", "", "".join(out)).splitlines()
    assert lines == [
        line[:59]
        for line in [
            f"12 jobs (basic): 0 pending, 0 running, 11 completed, 1 failed; sweep dir {tmp_path}",
            "lr=6   failed: ValueError: bad",
            f"lr=0   {COMPLETED}",
            "… 10 more (10 completed)",
            f"report: {tmp_path / 'report.md'}: Best setting on validation",
            f"ensemble: {tmp_path / 'ensemble.json'}: 2 models on the test split",
            f"resume the 1 unfinished job with: fmsweep resume {tmp_path}",
        ]
    ]


def test_fmsweep_status_imports_neither_torch_nor_hydra() -> None:
    """`fmsweep status` answers at once: nothing of training is imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fmsweep.status", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: fmsweep status")
    modules = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in modules if m.split(".")[0] in ("torch", "hydra", "omegaconf", "yaml", "numpy")}


@pytest.mark.slurm
@needs_cluster
def test_read_sees_real_slurm_jobs_pending_running_and_cancelled(tmp_path: Path) -> None:
    """Two jobs that each want every CPU of the node: the first runs, the second pends; a third, held, is
    cancelled before it ever runs, which only sacct remembers once squeue forgets it."""
    cpus = max(
        int(n)
        for n in subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True).stdout.split()
    )

    def sbatch(*args: str) -> str:
        return (
            subprocess.run(
                [
                    "sbatch",
                    "--parsable",
                    f"--cpus-per-task={cpus}",
                    "-o",
                    "/dev/null",
                    "-J",
                    "fmsweep-status-test",
                    *args,
                    "--wrap",
                    "sleep 3600",
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=tmp_path,
            )
            .stdout.strip()
            .split(";")[0]
        )

    ids = [sbatch(), sbatch(), sbatch("--hold")]
    try:
        subprocess.run(["scancel", ids[2]], check=True)
        manifest = sweep(tmp_path / "sweep", 3, launcher="slurm")
        for job, job_id in zip(manifest.jobs, ids):
            job.launcher_job = job_id
        manifest.save()
        deadline = time.monotonic() + 120  # other jobs on the cluster may hold the node a while
        while True:
            statuses = status.read(manifest)
            if (statuses[0].state == "running" and statuses[2].state == "cancelled") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert statuses[0] == Status("running", "starting")
        assert statuses[1].state == "pending" and statuses[1].detail in ("Resources", "Priority")
        assert statuses[2] == Status("cancelled", "SLURM CANCELLED by " + str(os.getuid()))
        assert status.alive(manifest) == {0, 1}
    finally:
        subprocess.run(["scancel", *ids], check=False)


def test_a_search_counts_its_trials_not_asked_and_says_how_to_finish_them(tmp_path: Path) -> None:
    manifest = sweep(tmp_path, 1, trials=4, workers=["4242424"], launcher="submitit_local")  # a pid of no process
    manifest.kind = "search"
    start(tmp_path / manifest.jobs[0].name)
    completed(tmp_path / manifest.jobs[0].name)
    view = status.look(manifest)
    assert view.workers_alive == 0 and status.over(view)
    text = status.render(manifest, view)
    assert text.startswith("4 trials (submitit_local): 3 pending, 0 running, 1 completed, 0 failed; ")
    assert f"resume the 3 unfinished trials with: fmsweep resume {tmp_path}" in text


def test_a_run_on_another_node_is_known_by_its_lock_files_heartbeat(tmp_path: Path) -> None:
    """/proc/locks holds this host's locks only: a run dir whose lock file names a process of another host is
    running while the file's heartbeat is fresh, and not once it is stale or SLURM says that job ended; a lock file
    naming this host, which /proc/locks would show if it were held, is no run (the negative control)."""
    manifest = sweep(tmp_path, 1)
    run_dir = tmp_path / manifest.jobs[0].name
    start(run_dir)
    history(run_dir, [0.4])
    path = run_dir / lock.LOCK
    path.write_text("pid 4242 on node-17, SLURM job 77_1, since 2026-12-06 10:00:00")
    assert texts(manifest) == ["running: epoch 1 of 3, best valid loss 0.4000 (epoch 1)"]
    assert lock.held_elsewhere(path, lambda job_id: False)
    assert not lock.held_elsewhere(path, lambda job_id: job_id == "77_1")  # SLURM says its job ended
    stale = time.time() - lock.STALE_S - 1
    os.utime(path, (stale, stale))
    assert texts(manifest) == ["stopped: epoch 1 of 3"]
    path.write_text(f"pid 4242 on {socket.gethostname()}, since 2026-12-06 10:00:00")
    assert texts(manifest) == ["stopped: epoch 1 of 3"]


def test_a_run_refreshes_its_lock_files_heartbeat_and_empties_it_when_it_lets_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.01)
    path = tmp_path / "run" / lock.LOCK
    with lock.hold([tmp_path / "run"]):
        assert lock.HOLDER.match(path.read_text())
        first = path.stat().st_mtime_ns
        wait_for("a heartbeat", lambda: path.stat().st_mtime_ns > first, timeout=60)
    assert path.read_text() == ""


def requeued_mark(job_dir: Path, job: str, why: str) -> None:
    """What a run writes as it stops for SLURM to requeue its job (fmsweep.signals.mark_requeued)."""
    start(job_dir)
    history(job_dir, [0.4])
    (job_dir / lock.LOCK).write_text("")  # its lock let go just before
    atomic_write(job_dir / status.REQUEUED, json.dumps({"job": job, "why": why, "at": "", "where": "in epoch 2"}))


def test_a_job_slurm_requeued_is_shown_requeued_with_why_while_it_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PENDING again after its run stopped for a requeue: `requeued (preempted)`, the run's word on why; SLURM's
    own requeue (the run cannot tell a preemption without grace time from `scontrol requeue`) is told by the
    attempt accounting recorded. A mark of another SLURM job, or one older than a run that started since (its lock
    file rewritten), is no word on this wait: pending, with SLURM's reason."""
    manifest = sweep(tmp_path / "sweep", 5, launcher="slurm")
    for job, job_id in zip(manifest.jobs, ["50", "51_2", "52", "53", "54"]):
        job.launcher_job = job_id
    manifest.save()
    dirs = [manifest.sweep_dir / job.name for job in manifest.jobs]
    requeued_mark(dirs[0], "50", "preempted")
    requeued_mark(dirs[1], "51_2", status.BY_SLURM)
    requeued_mark(dirs[2], "49", "preempted")  # an earlier launch's job
    requeued_mark(dirs[3], "53", "time limit")
    time.sleep(0.01)
    (dirs[3] / lock.LOCK).write_text("pid 1 on elsewhere, SLURM job 53, since then")  # it ran again since
    pending = "".join(f"{i}|PENDING|BeginTime\n" for i in ("50", "51_2", "52", "53", "54"))
    log = fake_slurm(tmp_path / "bin", monkeypatch, squeue=pending, sacct="51_2|PREEMPTED\n51_2|PENDING\n")
    view = status.look(manifest)
    assert [s.text() for s in view.statuses.values()] == [
        "requeued (preempted)",
        "requeued (preempted)",  # accounting: its attempt before this wait PREEMPTED
        "pending (BeginTime)",
        "pending (BeginTime)",
        "pending (BeginTime)",
    ]
    assert view.alive == {0, 1, 2, 3, 4} and not status.over(view)
    assert log.read_text().splitlines()[1] == "sacct -n -P -X -D -o JobID,State -j 51_2"  # only for the unsure one
    assert (
        status.render(manifest, view)
        .splitlines()[0]
        .startswith("5 jobs (slurm): 3 pending, 2 requeued, 0 running, 0 completed, 0 failed;")
    )
    fake_slurm(tmp_path / "bin", monkeypatch, squeue=pending, sacct="51_2|REQUEUED\n51_2|PENDING\n")
    assert status.read(manifest)[1] == Status("requeued", "scontrol requeue")
    fake_slurm(tmp_path / "bin", monkeypatch, squeue=pending, sacct_rc=1, stderr="sacct: error: no dbd")
    assert status.read(manifest)[1] == Status("requeued", status.BY_SLURM)  # no accounting: both are possible
    assert status.alive(manifest) == {0, 1, 2, 3, 4}
    running = "50|RUNNING|None\n51_2|RUNNING|None\n52|PENDING|Priority\n53|PENDING|Priority\n54|PENDING|Priority\n"
    fake_slurm(tmp_path / "bin", monkeypatch, squeue=running)
    assert [s.state for s in status.read(manifest).values()] == ["running", "running", "pending", "pending", "pending"]


NO_DBD = "sacct: error: Problem talking to the database: Connection refused"


def unaccounted_sweep(tmp_path: Path, held: contextlib.ExitStack) -> Manifest:
    """A detached SLURM sweep of 7 jobs whose launcher jobs squeue no longer lists but for one, running: completed,
    stopped after epoch 1 (killed, timed out, cancelled: only accounting knows), never started, failed (its
    metrics.json), cancelled by fmsweep cancel, running, not submitted; its finish job gone too."""
    manifest = sweep(tmp_path / "sweep", 7, launcher="slurm", detach=True, finish_job="69")
    for job in manifest.jobs[:6]:
        job.launcher_job = str(60 + job.num)
    manifest.jobs[4].cancelled = True
    manifest.save()
    set_states(manifest, "cspfprp", held)
    return manifest


def test_without_accounting_a_job_that_left_squeue_ended_and_how_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: contextlib.ExitStack
) -> None:
    """sacct fails (no slurmdbd) where squeue answers: what the files say stands (completed, failed, the record's
    cancel), squeue's running job runs, and a job that left the queue with nothing in its files ended, how unknown,
    never a guess (stopped, pending, failed); one line says so. Nothing of it is alive, and resume relaunches it."""
    manifest = unaccounted_sweep(tmp_path, held)
    fake_slurm(tmp_path / "bin", monkeypatch, squeue="65|RUNNING|None\n", sacct_rc=1, stderr=NO_DBD)
    view = status.look(manifest)
    assert [s.text() for s in view.statuses.values()] == [
        COMPLETED,
        "ended: epoch 1 of 3 (no accounting: how unknown)",
        "ended: before it started (no accounting: how unknown)",
        "failed: ValueError: bad",
        "cancelled: by fmsweep cancel",
        "running: epoch 1 of 3, best valid loss 0.4000 (epoch 1)",
        "not submitted",
    ]
    assert view.unaccounted == NO_DBD and view.silent is None and view.alive == {5}
    sweep_dir = manifest.sweep_dir
    assert status.render(manifest, view).splitlines() == [
        f"7 jobs (slurm): 0 pending, 1 not submitted, 1 running, 1 completed, 1 failed, 1 cancelled, 2 ended; "
        f"sweep dir {sweep_dir}",
        f"lr=0  {COMPLETED}",
        "lr=1  ended: epoch 1 of 3 (no accounting: how unknown)",
        "lr=2  ended: before it started (no accounting: how unknown)",
        "lr=3  failed: ValueError: bad",
        "lr=4  cancelled: by fmsweep cancel",
        "lr=5  running: epoch 1 of 3, best valid loss 0.4000 (epoch 1)",
        "lr=6  not submitted",
        "finish job 69 (writes the results): ended (no accounting: how unknown)",
        f"accounting does not answer ({NO_DBD}): how 2 jobs and the finish job ended once out of SLURM's queue is "
        "unknown (shown ended); squeue and the files tell the rest",
    ]
    assert status.alive(manifest) == {5}
    held.close()  # job 5 ends too, and leaves the queue: resumable, as the others that did not complete
    fake_slurm(tmp_path / "bin", monkeypatch, sacct_rc=1, stderr=NO_DBD)
    view = status.look(manifest)
    assert view.statuses[5] == Status("ended", "epoch 1 of 3 (no accounting: how unknown)") and status.over(view)
    assert (
        status.render(manifest, view).splitlines()[-1]
        == f"resume the 6 unfinished jobs with: fmsweep resume {sweep_dir}"
    )
    configs = [OmegaConf.create({"hydra": {"job": {"num": job.num}}}) for job in manifest.jobs]
    assert sorted(grid.to_launch(manifest, configs)) == [1, 2, 3, 4, 5, 6]  # resume asks no accounting


def test_without_sacct_installed_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: contextlib.ExitStack
) -> None:
    """squeue there, sacct not: as when it fails, said as `sacct not found`. (Without squeue either, the files
    alone decide, as on a laptop: stopped, pending.)"""
    manifest = unaccounted_sweep(tmp_path, held)
    bin_dir = tmp_path / "bin"
    fake_slurm(bin_dir, monkeypatch, squeue="65|RUNNING|None\n")
    (bin_dir / "sacct").unlink()
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "cat").symlink_to(shutil.which("cat") or "/bin/cat")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{tools}")
    view = status.look(manifest)
    assert view.unaccounted == "sacct not found"
    assert view.statuses[1] == Status("ended", "epoch 1 of 3 (no accounting: how unknown)")
    (bin_dir / "squeue").unlink()
    view = status.look(manifest)
    assert view.unaccounted is None and view.statuses[1] == Status("stopped", "epoch 1 of 3")
    assert view.statuses[2] == Status("pending")
