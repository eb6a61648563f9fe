"""A sweep that outlives its terminal, on the real SLURM cluster: detached and watched with `fmsweep status`, its
results written by a job that depends on the others; an attached one whose command dies (SIGHUP) rerun without a
second SLURM job for any job; a job cancelled with a plain scancel and resumed with `fmsweep resume`; `fmsweep
cancel` on a running sweep. And, without SLURM: a rerun that differs from the record is refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, Gate, fast_overrides, make_fashion_root, wait_for
from test_slurm import CPU_SLURM, job_dirs, needs_cluster, sweep


def fmsweep(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmsweep.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def record(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep.json").read_text())


def sacct_jobs(sweep_dir: Path) -> list[tuple[str, str]]:
    """(job id, state) of every SLURM job of the sweep, array tasks one by one, from accounting: each submission's
    name carries the sweep's id (`fmsweep:<sweep dir's name>:<sweep id>.<n>`)."""
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-o", "JobID,JobName,State", "-S", "now-1hour"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    mark = f":{record(sweep_dir)['sweep_id']}."
    fields = (line.split("|") for line in out.splitlines())
    return [(f[0], f[2]) for f in fields if len(f) == 3 and mark in f[1]]


def jobs_of(sweep_dir: Path) -> list[Path]:
    """The sweep's job dirs so far ([] before the sweep dir exists)."""
    return job_dirs(sweep_dir) if sweep_dir.is_dir() else []


def history_epochs(job: Path) -> list[int]:
    lines = (job / "history.csv").read_text().splitlines()[1:]
    return [int(float(line.split(",")[0])) for line in lines]


def tensorboard_epochs(job: Path) -> list[int]:
    """The epochs of the valid accuracy scalar over all of the job's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in sorted(job.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tag = next(t for t in acc.Tags()["scalars"] if "valid" in t and "acc" in t)
        steps += [e.step for e in acc.Scalars(tag)]
    return sorted(steps)


@pytest.mark.slurm
@needs_cluster
def test_a_detached_grid_returns_at_once_and_its_status_follows_it_to_its_results(tmp_path: Path, held: Gate) -> None:
    data_root = make_fashion_root(tmp_path / "data", n_test=1000)  # enough test images for an ensemble
    sweep_dir = tmp_path / "detached"
    held.hold(1)  # no job can end until the command returned: it returns without waiting for them
    t0 = time.perf_counter()
    proc = sweep(
        *CPU_SLURM,
        *fast_overrides(data_root),
        "epochs=2",
        "model=linear",
        "seed=0,1,2,3",
        "hydra.sweeper.detach=true",
        f"hydra.sweep.dir={sweep_dir}",
    )
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(sweep_dir.glob("*/metrics.json")) and not (sweep_dir / "report.md").exists()
    assert "fmsweep status" in proc.stdout and "fmsweep cancel" in proc.stdout
    sweep_record = record(sweep_dir)
    assert len(sweep_record["jobs"]) == 4 and all(job["launcher_job"] for job in sweep_record["jobs"])
    assert sweep_record["finish_job"]
    held.release()
    watched = fmsweep("status", str(sweep_dir), "--watch", "--interval", "1")
    assert watched.returncode == 0, watched.stdout[-2000:] + watched.stderr[-2000:]
    assert (sweep_dir / "report.md").is_file() and (sweep_dir / "report.png").is_file()
    assert len(json.loads((sweep_dir / "ensemble.json").read_text())["members"]) == 4
    final = fmsweep("status", str(sweep_dir))
    assert "4 completed" in final.stdout and "report.md" in final.stdout and "ensemble" in final.stdout, final.stdout
    assert f"finish job {sweep_record['finish_job']} (writes the results): COMPLETED" in final.stdout
    print(f"\ndetached 4-job grid: the command returned in {wall:.1f} s\n{proc.stdout}\n{final.stdout}")


@pytest.mark.slurm
@needs_cluster
def test_a_rerun_after_the_command_died_submits_no_second_job_for_a_live_or_completed_one(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    sweep_dir = tmp_path / f"hup-{time.time_ns()}"  # a name of its own: sacct finds its jobs by it
    # job 0 trains 1 epoch and completes; job 1 is held after its epoch 2 until the rerun has looked at it
    args = [*CPU_SLURM, *fast_overrides(data_root), "model=linear", "epochs=1,3", f"hydra.sweep.dir={sweep_dir}"]
    held.hold(2)
    # SIGHUP as a terminal's command gets it: by default it ends the process (also where the tests run under nohup,
    # which makes every child ignore it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fmsweep", "-m", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    try:
        held.wait_held(2, alive=lambda: proc.poll() is None)
        wait_for("job 0 completed", lambda: any((j / "metrics.json").is_file() for j in jobs_of(sweep_dir)))
        os.killpg(proc.pid, signal.SIGHUP)  # the terminal (an SSH session) went away
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    submitted = [job["launcher_job"] for job in record(sweep_dir)["jobs"]]  # the first launch's SLURM jobs
    before = sacct_jobs(sweep_dir)
    # the rerun decides, then waits for the job still alive: let that one go once the rerun said what it found
    again = subprocess.Popen(
        [sys.executable, "-m", "fmsweep", "-m", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = []
    assert again.stdout is not None
    while (line := again.stdout.readline()) and "still alive from an earlier launch" not in line:
        out.append(line)
    held.release()
    out += [line, again.communicate(timeout=600)[0]]
    assert again.returncode == 0, "".join(out)[-3000:]
    assert "completed before, skipped" in "".join(out) and "still alive from an earlier launch" in line
    assert [job["launcher_job"] for job in record(sweep_dir)["jobs"]] == submitted
    # accounting may lag behind SLURM under load: wait until it lists the jobs that ended
    wait_for("accounting", lambda: {job_id for job_id, _ in sacct_jobs(sweep_dir)} >= set(submitted))
    after = sacct_jobs(sweep_dir)
    assert sorted(job_id for job_id, _ in after) == sorted(submitted), (before, after)
    for job, epochs in zip(job_dirs(sweep_dir), (1, 3)):
        assert json.loads((job / "metrics.json").read_text())["status"] == "completed"
        assert history_epochs(job) == list(range(1, epochs + 1))
        assert tensorboard_epochs(job) == list(range(1, epochs + 1))
    print(f"\nrerun after SIGHUP: sacct before {before}, after {after}\n{''.join(out)}")


@pytest.mark.slurm
@needs_cluster
def test_a_scancelled_job_is_recorded_cancelled_and_resume_finishes_it(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    sweep_dir = tmp_path / "scancel"
    args = [
        *CPU_SLURM,
        *fast_overrides(data_root),
        "model=linear",
        "epochs=3",
        "seed=0,1",
        "hydra.sweeper.detach=true",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    held.hold(1)
    assert sweep(*args).returncode == 0
    job0 = record(sweep_dir)["jobs"][0]
    wait_for("job 0 held after epoch 1", lambda: job0["name"] in held.held(1))
    subprocess.run(["scancel", job0["launcher_job"]], check=True)
    wait_for("the cancelled job to leave squeue", lambda: not alive([job0["launcher_job"]]), every=0.2)
    held.release()  # the other job trains to its end
    job_dir = sweep_dir / job0["name"]
    shown = fmsweep("status", str(sweep_dir))
    assert "seed=0  cancelled" in shown.stdout, shown.stdout  # named by what it does not share with job 1
    assert json.loads((job_dir / "metrics.json").read_text())["status"] == "cancelled"
    other = sweep_dir / record(sweep_dir)["jobs"][1]["name"]
    wait_for("the other job", lambda: (other / "metrics.json").is_file())
    resumed = fmsweep("resume", str(sweep_dir), "--attach")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert json.loads((job_dir / "metrics.json").read_text())["status"] == "completed"
    assert history_epochs(job_dir) == [1, 2, 3]
    assert "Resuming from" in "".join(p.read_text() for p in job_dir.glob("*.log"))
    print(f"\nscancel: status said:\n{shown.stdout}")


def alive(ids: list[str]) -> list[str]:
    """Which of the SLURM jobs `ids` (job ids, array tasks `12_3`, whole arrays `12`) squeue lists as queued or
    running; squeue failing fails the test."""
    queue = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, check=True
    ).stdout.split()
    return [i for i in ids if i in queue or any(q.startswith(f"{i}_") for q in queue)]


@pytest.mark.slurm
@needs_cluster
def test_fmsweep_cancel_leaves_no_job_of_a_running_sweep_alive(data_root: Path, tmp_path: Path, held: Gate) -> None:
    sweep_dir = tmp_path / "cancel"
    held.hold(1)  # the jobs that start wait after epoch 1: the cancel finds them running
    assert (
        sweep(
            *CPU_SLURM,
            *fast_overrides(data_root),
            "model=linear",
            "epochs=3",
            "seed=0,1,2",
            "hydra.sweeper.detach=true",
            f"hydra.sweep.dir={sweep_dir}",
        ).returncode
        == 0
    )
    held.wait_held(1)
    cancelled = fmsweep("cancel", str(sweep_dir))
    assert cancelled.returncode == 0, cancelled.stderr
    ids = [job["launcher_job"] for job in record(sweep_dir)["jobs"]]
    assert alive([*ids, record(sweep_dir)["finish_job"]]) == []
    shown = fmsweep("status", str(sweep_dir))
    jobs = record(sweep_dir)["jobs"]
    assert any(job["cancelled"] for job in jobs)
    for seed, job in enumerate(jobs):
        metrics = sweep_dir / job["name"] / "metrics.json"  # read only for a job not cancelled: it completed
        assert job["cancelled"] or json.loads(metrics.read_text())["status"] == "completed"
        assert f"seed={seed}  cancelled" in shown.stdout or f"seed={seed}  completed" in shown.stdout, shown.stdout


@pytest.mark.slurm
@needs_cluster
def test_fmsweep_cancel_stops_a_detached_searchs_workers_and_its_results_job(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    sweep_dir = tmp_path / "search"
    held.hold(1)  # each worker waits in its first trial until the cancel
    assert (
        sweep(
            *CPU_SLURM,
            *fast_overrides(data_root),
            "model=linear",
            "epochs=2",
            "optimizer.lr=tag(log,interval(1e-4,1e-1))",
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=6",
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.detach=true",
            f"hydra.sweep.dir={sweep_dir}",
        ).returncode
        == 0
    )
    held.wait_held(1, runs=2)
    workers, finish = record(sweep_dir)["workers"], record(sweep_dir)["finish_job"]
    assert len(workers) == 2 and finish and len(alive([*workers, finish])) == 3
    cancelled = fmsweep("cancel", str(sweep_dir))
    assert cancelled.returncode == 0, cancelled.stderr
    assert "2 SLURM jobs" in cancelled.stdout and f"finish job {finish}" in cancelled.stdout, cancelled.stdout
    assert alive([*workers, finish]) == []
    jobs = record(sweep_dir)["jobs"]
    assert len(jobs) == 2 and all(job["cancelled"] for job in jobs)  # the two trials the workers held
    for job in jobs:
        assert json.loads((sweep_dir / job["name"] / "metrics.json").read_text())["status"] == "cancelled"
    shown = fmsweep("status", str(sweep_dir))
    assert "2 cancelled" in shown.stdout, shown.stdout


def test_a_rerun_whose_overrides_differ_from_the_record_is_refused(data_root: Path, tmp_path: Path) -> None:
    args = [*fast_overrides(data_root), "model=linear", "data.subset=600", f"hydra.sweep.dir={tmp_path}"]
    assert sweep(*args, "seed=0,1").returncode == 0
    written = (tmp_path / "sweep.json").read_bytes()
    refused = sweep(*args, "seed=0,2")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert "seed=2 instead of seed=1" in refused.stderr and "nothing was launched" in refused.stderr
    assert (tmp_path / "sweep.json").read_bytes() == written
