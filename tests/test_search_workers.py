"""A search's workers on the real SLURM cluster: detached, they ask, train and tell trials with no process watching,
until the study holds exactly n_trials ended trials, also when one worker is cancelled for good mid-trial (its
trial is taken over by the other worker and resumed from its last.pt); `fmsweep status` follows it and its results
are written by the job that waits for the workers. A preempted worker (USR2) is requeued and resumes its trial."""
import json
import subprocess
from pathlib import Path

import pytest
from optuna.trial import TrialState
from conftest import fast_overrides
from test_durable import fmsweep, history_epochs, record, wait_for
from test_slurm import CPU_SLURM, needs_cluster, sweep, usr2_after_two_epochs

from fmsweep.sweep import search

SPACE = ["model=fc", "optimizer.lr=tag(log,interval(1e-4,1e-1))"]


def running_trial_of(sweep_dir: Path, worker: str) -> dict | None:
    """The trial the worker trains now, once it has saved two epochs (and so a last.pt to resume from)."""
    for job in record(sweep_dir)["jobs"] if (sweep_dir / "sweep.json").is_file() else []:
        run_dir = sweep_dir / job["name"]
        if (job["launcher_job"] == worker and not (run_dir / "metrics.json").exists()
                and (run_dir / "history.csv").is_file() and len(history_epochs(run_dir)) >= 2):
            return job
    return None


@pytest.mark.slurm
@needs_cluster
def test_a_detached_search_ends_with_its_trials_when_a_worker_is_cancelled_for_good(data_root: Path,
                                                                                   tmp_path: Path) -> None:
    sweep_dir = tmp_path / "search"
    proc = sweep(*CPU_SLURM, f"data.root={data_root}", "data.download=false", "device=cpu", *SPACE, "epochs=12",
                 "batch_size=32", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=12", "hydra.sweeper.n_jobs=2",
                 "hydra.sweeper.detach=true", f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "detached search" in proc.stdout and "2 worker(s)" in proc.stdout, proc.stdout
    workers = record(sweep_dir)["workers"]
    assert len(workers) == 2 and record(sweep_dir)["finish_job"]
    found: list[dict] = []
    wait_for("worker 0 two epochs into a trial", lambda: found.append(running_trial_of(sweep_dir, workers[0]))
             or found[-1] is not None, every=0.2)
    orphan = found[-1]
    subprocess.run(["scancel", workers[0]], check=True)  # for good: no requeue
    status = fmsweep("status", str(sweep_dir))
    assert status.returncode == 0 and "12 trials (slurm)" in status.stdout, status.stdout + status.stderr
    watched = fmsweep("status", str(sweep_dir), "--watch", "--interval", "1")
    assert watched.returncode == 0, watched.stdout[-3000:] + watched.stderr[-2000:]
    trials = search.find_study(sweep_dir).trials
    assert len(trials) == 12 and all(t.state == TrialState.COMPLETE for t in trials)
    taken = next(job for job in record(sweep_dir)["jobs"] if job["num"] == orphan["num"])
    assert taken["launcher_job"] == workers[1]  # the other worker took it over
    log = (sweep_dir / orphan["name"] / "__main__.log").read_text()
    assert "Resuming from" in log
    assert json.loads((sweep_dir / orphan["name"] / "metrics.json").read_text())["epochs_run"] == 12
    assert (sweep_dir / "report.md").is_file() and "## Search" in (sweep_dir / "report.md").read_text()
    print(f"\ndetached 12-trial search, worker {workers[0]} cancelled in trial {orphan['num']}:\n"
          f"{proc.stdout}\n{watched.stdout[-1500:]}")


@pytest.mark.slurm
@needs_cluster
def test_a_preempted_worker_is_requeued_and_resumes_its_own_trial(data_root: Path, tmp_path: Path) -> None:
    epochs = 12
    args = [*CPU_SLURM, *fast_overrides(data_root), f"epochs={epochs}", "model=vanilla_cnn", "batch_size=8",
            "optimizer.lr=tag(log,interval(1e-3,1e-2))", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=1"]
    proc, out, [first], _ = usr2_after_two_epochs(args, tmp_path, jobs=1)
    assert proc.returncode == 0, out[-3000:]
    trials = search.find_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    [worker] = record(tmp_path)["workers"]
    assert {job["launcher_job"] for job in record(tmp_path)["jobs"]} == {worker}  # the same worker, requeued
    log = (first / "__main__.log").read_text()
    assert "Signal 12: saved" in log and "Resuming from" in log
    assert history_epochs(first) == list(range(1, epochs + 1))
