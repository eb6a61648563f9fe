"""A grid larger than the cluster's submit limit, on the test cluster's QOS `capped` (MaxSubmitJobsPerUser=8, see
tests/slurm/start.sh): submitted as the limit leaves room, the rest submitted by the sweep's own jobs as they end,
with no command after the first; a limit that only sbatch's refusal tells; cancel and resume of such a sweep."""

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT, fast_overrides, needs_cluster, wait_for
from test_slurm import CPU_SLURM, sweep

from fmsweep.sweep import manifest, status

LIMIT = 8  # the QOS capped's MaxSubmitJobsPerUser
CAPPED = [*CPU_SLURM, "hydra.launcher.qos=capped", "model=linear", "hydra.sweeper.detach=true"]
WAITING = "not submitted: waiting for room under the cluster's submit limit"

pytestmark = [pytest.mark.slurm, pytest.mark.slow, needs_cluster]


def capped_queue() -> int:
    """How many of this user's jobs (array tasks each) the QOS capped holds now."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-u", os.environ.get("USER", "root"), "-q", "capped"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len(out.splitlines())


class Sampler(threading.Thread):
    """Samples, until stopped, how many jobs QOS capped queues and how many of the sweep's jobs still wait."""

    def __init__(self, sweep_dir: Path) -> None:
        super().__init__(daemon=True)
        self.sweep_dir, self.stop = sweep_dir, threading.Event()
        self.samples: list[tuple[int, int]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            record = manifest.load(self.sweep_dir)
            waiting = sum(job.waiting and not job.launcher_job for job in record.jobs) if record else 0
            self.samples.append((capped_queue(), waiting))
            self.stop.wait(0.2)


def fmsweep(*args: str) -> subprocess.CompletedProcess:
    """The `fmsweep` command (status, cancel, resume) as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "fmsweep.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )


def watch(sweep_dir: Path) -> subprocess.CompletedProcess:
    """`fmsweep status DIR --watch` until the sweep is over: the only command after the launch."""
    return fmsweep("status", str(sweep_dir), "--watch", "--interval", "1")


def test_a_grid_twice_the_submit_limit_runs_to_its_end_with_no_command_after_the_first(
    data_root: Path, tmp_path: Path
) -> None:
    assert capped_queue() == 0, "another test left jobs in QOS capped"
    sampler = Sampler(tmp_path)
    sampler.start()
    # one job of the limit left free: the sweep keeps at most 7 queued, its results job included
    proc = sweep(
        *CAPPED,
        *fast_overrides(data_root),
        "seed=range(16)",
        "hydra.sweeper.leave_free=1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "fmsweep: the cluster's submit limit (8 jobs: QOS capped's MaxSubmitJobsPerUser; 0 of yours queued, 1 left "
        "free (hydra.sweeper.leave_free)); 6 submitted, 10 not yet; they will be submitted as room frees up"
    ) in proc.stdout, proc.stdout
    first = status.render(manifest.require(tmp_path), status.look(manifest.require(tmp_path)))
    assert f"seed=15  {WAITING}" in first, first
    watched = watch(tmp_path)
    sampler.stop.set()
    sampler.join()
    assert watched.returncode == 0, watched.stdout[-3000:]
    record = manifest.require(tmp_path)
    final = status.render(record, status.look(record))
    assert final.startswith("16 jobs (slurm): 0 pending, 0 running, 16 completed, 0 failed;"), final
    assert (tmp_path / "report.md").is_file()
    assert all(job.launcher_job and not job.waiting for job in record.jobs)
    assert sum(entry.count for entry in record.submissions if entry.kind == "jobs") == 16  # none submitted twice
    queued = [q for q, _ in sampler.samples]
    while_waiting = [q for q, w in sampler.samples if w > 0]
    assert max(queued) <= LIMIT - 1, sampler.samples  # leave_free kept
    # held close to the limit while jobs waited: a job submits as it ends (its own slot still counts), and with two
    # cores two jobs may end at once, each finding no room: the queue drops at most 2 below the 7 the sweep may hold
    assert while_waiting and min(while_waiting) >= LIMIT - 1 - 3, sampler.samples
    assert max(while_waiting) == LIMIT - 1, sampler.samples


def test_a_limit_only_sbatch_tells_is_learned_and_cancel_and_resume_go_on_from_it(
    data_root: Path, tmp_path: Path
) -> None:
    assert capped_queue() == 0, "another test left jobs in QOS capped"
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "sacctmgr").write_text("#!/bin/sh\nexit 0\n")  # a cluster that states no limit
    (shim / "sacctmgr").chmod(0o755)
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}
    args = [*CAPPED, *fast_overrides(data_root), "seed=range(12)", f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(
        [sys.executable, "-m", "fmsweep", "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    refusal = [line for line in proc.stdout.splitlines() if line.startswith("fmsweep: sbatch refused job")]
    assert len(refusal) == 1 and re.fullmatch(
        r"fmsweep: sbatch refused job \d+ of 12: QOSMaxSubmitJobPerUserLimit; 8 submitted, 4 not yet; they will "
        r"be submitted as room frees up",
        refusal[0],
    ), proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    record = manifest.require(sweep_dir)
    assert record.submit_limit == LIMIT and record.finish_job is None  # no room for it: a job submits it as it ends
    assert sum(job.waiting for job in record.jobs) == 4
    done = fmsweep("cancel", str(sweep_dir))
    assert done.returncode == 0, done.stderr
    record = manifest.require(sweep_dir)
    view = status.look(record)
    waited = [job for job in record.jobs if job.waiting]
    assert waited and all(view.statuses[job.num].state == "cancelled" for job in waited), status.render(record, view)
    assert not view.alive and capped_queue() == 0  # nothing more was submitted, by a job or anything else
    again = fmsweep("resume", str(sweep_dir))
    assert again.returncode == 0, again.stderr[-3000:]
    watched = watch(sweep_dir)
    assert watched.returncode == 0, watched.stdout[-3000:]
    assert "12 completed" in watched.stdout and (sweep_dir / "report.md").is_file()
    wait_for("every job recorded submitted", lambda: not any(j.waiting for j in manifest.require(sweep_dir).jobs))


def test_no_room_at_all_is_one_line_and_nothing_is_submitted(data_root: Path, tmp_path: Path) -> None:
    proc = sweep(
        *CAPPED, *fast_overrides(data_root), "seed=0,1,2", "hydra.sweeper.leave_free=8", f"hydra.sweep.dir={tmp_path}"
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "fmsweep: error: the cluster's submit limit (8 jobs: QOS capped's MaxSubmitJobsPerUser; 0 of yours queued, 8 "
        "left free (hydra.sweeper.leave_free)); nothing of the sweep is queued, and the cluster takes no more of your "
        f"jobs now: 3 job(s) not submitted; fmsweep resume {tmp_path} submits them once your other jobs left room"
    ], proc.stderr
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert not record["submissions"] and all(job["waiting"] for job in record["jobs"])


def test_an_attached_grid_beyond_the_submit_limit_submits_the_rest_itself_and_ends_with_all_of_them(
    data_root: Path, tmp_path: Path
) -> None:
    assert capped_queue() == 0, "another test left jobs in QOS capped"
    attached = [arg for arg in CAPPED if arg != "hydra.sweeper.detach=true"]
    proc = sweep(*attached, *fast_overrides(data_root), "seed=range(10)", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in proc.stdout.splitlines() if line.startswith("fmsweep: the cluster's submit limit")]
    assert said == [
        "fmsweep: the cluster's submit limit (8 jobs: QOS capped's MaxSubmitJobsPerUser; 0 of yours queued); 8 "
        "submitted, 2 not yet; they will be submitted as room frees up"
    ], proc.stdout
    assert f"fmsweep: all jobs of {tmp_path} completed" in proc.stdout
    record = manifest.require(tmp_path)
    assert all(job.launcher_job and not job.waiting for job in record.jobs) and record.finish_job is None
    assert len(list(tmp_path.glob("*/metrics.json"))) == 10


def test_jobs_killed_amid_their_feeding_submit_nothing_twice(data_root: Path, tmp_path: Path) -> None:
    assert capped_queue() == 0, "another test left jobs in QOS capped"
    # the launch and every job that feeds the queue are killed right after their first sbatch answered, before
    # they record its id (the jobs inherit the variable): the next one adopts what SLURM holds under its name
    env = {**os.environ, "FMSWEEP_TEST_CRASH": "after-sbatch:1"}
    args = [*CAPPED, *fast_overrides(data_root), "seed=range(10)", f"hydra.sweep.dir={tmp_path}"]
    killed = subprocess.run(
        [sys.executable, "-m", "fmsweep", "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )
    assert killed.returncode != 0
    assert fmsweep("resume", str(tmp_path)).returncode == 0
    watched = watch(tmp_path)
    assert watched.returncode == 0, watched.stdout[-3000:]
    record = manifest.require(tmp_path)
    assert all(entry.id for entry in record.submissions)
    assert sum(entry.count for entry in record.submissions if entry.kind == "jobs") == 10  # none submitted twice
    logs = "".join(p.read_text() for p in tmp_path.glob(".submitit/*/*_log.out"))
    assert "which the record had not: adopted, not submitted again" in logs
    assert len(list(tmp_path.glob("*/metrics.json"))) == 10 and (tmp_path / "report.md").is_file()
