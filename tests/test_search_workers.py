"""A search's workers on the real SLURM cluster: detached, they ask, train and tell trials with no process watching,
until the study holds exactly n_trials ended trials, also when one worker is cancelled for good mid-trial (its
trial is taken over by the other worker and resumed from its last.pt); `fmsweep status` follows it and its results
are written by the job that waits for the workers. A preempted worker (USR2) is requeued and resumes its trial."""

import json
import subprocess
from pathlib import Path

import pytest
from conftest import Gate, fast_overrides, wait_for
from optuna.trial import TrialState
from test_durable import alive, fmsweep, history_epochs, record
from test_slurm import CPU_SLURM, needs_cluster, sweep, usr2_after_two_epochs

from fmsweep.sweep import storage

SPACE = ["model=fc", "optimizer.lr=tag(log,interval(1e-4,1e-1))"]


def trial_of(sweep_dir: Path, worker: str, names: list[str]) -> dict | None:
    """The record's trial among the run dirs `names` that the worker trains."""
    return next(
        (job for job in record(sweep_dir)["jobs"] if job["launcher_job"] == worker and job["name"] in names), None
    )


@pytest.mark.slurm
@needs_cluster
def test_a_detached_search_ends_with_its_trials_when_a_worker_is_cancelled_for_good(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    sweep_dir = tmp_path / "search"
    epochs = 3
    held.hold(2)  # each worker waits after epoch 2 of its first trial: a last.pt to resume from, the trial unfinished
    proc = sweep(
        *CPU_SLURM,
        f"data.root={data_root}",
        "data.download=false",
        "device=cpu",
        *SPACE,
        f"epochs={epochs}",
        "batch_size=32",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.detach=true",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "detached search" in proc.stdout and "2 worker(s)" in proc.stdout, proc.stdout
    workers = record(sweep_dir)["workers"]
    assert len(workers) == 2 and record(sweep_dir)["finish_job"]
    orphan = trial_of(sweep_dir, workers[0], held.wait_held(2, runs=2))
    assert orphan is not None
    subprocess.run(["scancel", workers[0]], check=True)  # for good: no requeue
    wait_for("worker 0 to leave squeue", lambda: not alive([workers[0]]))
    held.release()
    status = fmsweep("status", str(sweep_dir))
    assert status.returncode == 0 and "6 trials (slurm)" in status.stdout, status.stdout + status.stderr
    watched = fmsweep("status", str(sweep_dir), "--watch", "--interval", "1")
    assert watched.returncode == 0, watched.stdout[-3000:] + watched.stderr[-2000:]
    study = storage.find_study(sweep_dir)
    assert study is not None
    trials = study.trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    taken = next(job for job in record(sweep_dir)["jobs"] if job["num"] == orphan["num"])
    assert taken["launcher_job"] == workers[1]  # the other worker took it over
    log = (sweep_dir / orphan["name"] / "__main__.log").read_text()
    assert "Resuming from" in log
    assert json.loads((sweep_dir / orphan["name"] / "metrics.json").read_text())["epochs_run"] == epochs
    assert history_epochs(sweep_dir / orphan["name"]) == list(range(1, epochs + 1))
    assert (sweep_dir / "report.md").is_file() and "## Search" in (sweep_dir / "report.md").read_text()
    print(
        f"\ndetached 6-trial search, worker {workers[0]} cancelled in trial {orphan['num']}:\n"
        f"{proc.stdout}\n{watched.stdout[-1500:]}"
    )


@pytest.mark.slurm
@needs_cluster
def test_a_preempted_worker_is_requeued_and_resumes_its_own_trial(data_root: Path, tmp_path: Path, held: Gate) -> None:
    epochs = 4
    args = [
        *CPU_SLURM,
        *fast_overrides(data_root),
        f"epochs={epochs}",
        "model=vanilla_cnn",
        "optimizer.lr=tag(log,interval(1e-3,1e-2))",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
    ]
    proc, out, [first], _ = usr2_after_two_epochs(args, tmp_path, held)
    assert proc.returncode == 0, out[-3000:]
    study = storage.find_study(tmp_path)
    assert study is not None
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    [worker] = record(tmp_path)["workers"]
    assert {job["launcher_job"] for job in record(tmp_path)["jobs"]} == {worker}  # the same worker, requeued
    log = (first / "__main__.log").read_text()
    assert "Signal 12: saved" in log and "Resuming from" in log
    assert history_epochs(first) == list(range(1, epochs + 1))


@pytest.mark.slurm
@needs_cluster
def test_a_resume_of_a_search_whose_workers_run_adds_none_and_keeps_its_results_job(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    """Its n_jobs workers of the first launch still run: a resume submits no other worker (each takes trials until
    the study holds n_trials), and the results job waits on as it was."""
    sweep_dir = tmp_path / "search"
    held.hold(0)
    args = [*CPU_SLURM, *fast_overrides(data_root), *SPACE, "epochs=1", "hydra/sweeper=optuna"]
    args += ["hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2", "hydra.sweeper.detach=true"]
    assert sweep(*args, f"hydra.sweep.dir={sweep_dir}").returncode == 0
    first = record(sweep_dir)
    held.wait_held(0, runs=2)  # both workers train a trial
    resumed = fmsweep("resume", str(sweep_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "2 workers of an earlier launch still queued or running, of hydra.sweeper.n_jobs=2" in resumed.stdout
    again = record(sweep_dir)
    assert again["workers"] == first["workers"] and again["finish_job"] == first["finish_job"], resumed.stdout
    held.release()
    watched = fmsweep("status", str(sweep_dir), "--watch", "--interval", "1")
    assert watched.returncode == 0 and "3 completed" in watched.stdout, watched.stdout[-2000:]
    assert len(record(sweep_dir)["jobs"]) == 3 and (sweep_dir / "report.md").is_file()
