"""Never a second SLURM job for one job, on the real cluster: a launcher killed between sbatch and its record, an
sbatch that fails after SLURM took the job, one that SLURM refused, squeue failing as a detached launch ends, a
resume while the results job waits. Each submission is recorded before its sbatch, under a name that finds it."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, Gate, fast_overrides, needs_cluster, wait_for
from test_durable import fmsweep, history_epochs, record, sacct_jobs
from test_slurm import CPU_SLURM, job_dirs

pytestmark = [pytest.mark.slurm, needs_cluster]


def detached(
    data_root: Path, sweep_dir: Path, seeds: str = "0,1", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """A detached grid of linear models, one epoch per seed, in `sweep_dir`."""
    args = [*CPU_SLURM, *fast_overrides(data_root), "model=linear", "epochs=1", f"seed={seeds}"]
    return subprocess.run(
        [sys.executable, "-m", "fmsweep", "-m", *args, "hydra.sweeper.detach=true", f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def wrapper(folder: Path, command: str, script: str) -> dict[str, str]:
    """An environment whose PATH finds `script` as `command` first (the real one is `real` in it)."""
    folder.mkdir(parents=True, exist_ok=True)
    real = subprocess.run(["which", command], capture_output=True, text=True, check=True).stdout.strip()
    path = folder / command
    path.write_text(f"#!/bin/bash\nreal={real}\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def watch_to_the_end(sweep_dir: Path) -> subprocess.CompletedProcess:
    watched = fmsweep("status", str(sweep_dir), "--watch", "--interval", "1")
    assert watched.returncode == 0, watched.stdout[-2000:] + watched.stderr[-2000:]
    return watched


def assert_each_job_trained_once(sweep_dir: Path, jobs: int) -> None:
    dirs = job_dirs(sweep_dir)
    assert len(dirs) == jobs
    for job in dirs:
        assert json.loads((job / "metrics.json").read_text())["status"] == "completed"
        assert history_epochs(job) == [1]


def assert_slurm_holds_only_what_the_record_names(sweep_dir: Path) -> list[tuple[str, str]]:
    """Every SLURM job named after the sweep is one the record names (an array's task by its array); one job of
    the sweep's jobs per job number, and one results job."""
    saved = record(sweep_dir)
    wait_for("accounting", lambda: len(sacct_jobs(sweep_dir)) >= len(saved["jobs"]) + 1)
    found = sacct_jobs(sweep_dir)
    recorded = {entry["id"] for entry in saved["submissions"]}
    assert {job_id.partition("_")[0] for job_id, _ in found} == recorded, (found, saved["submissions"])
    results = [entry for entry in saved["submissions"] if entry["kind"] == "results"]
    assert [entry["id"] for entry in results] == [saved["finish_job"]]
    return found


def test_a_launcher_killed_after_sbatch_leaves_jobs_a_resume_adopts_instead_of_submitting_again(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    sweep_dir = tmp_path / "killed"
    held.hold(0)  # the jobs wait at their start until the record has been looked at
    proc = detached(data_root, sweep_dir, env={"FMSWEEP_TEST_CRASH": "after-sbatch:1"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    saved = record(sweep_dir)
    [entry] = saved["submissions"]
    assert entry["id"] is None and entry["kind"] == "jobs"  # sbatch ran; its answer never reached the record
    assert [job["launcher_job"] for job in saved["jobs"]] == [None, None]
    held.wait_held(0, runs=2)
    shown = fmsweep("status", str(sweep_dir))
    assert "2 running" in shown.stdout and "not submitted" not in shown.stdout, shown.stdout  # found by its name
    resumed = fmsweep("resume", str(sweep_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"SLURM holds submission {entry['name']} (jobs, 2 task(s)) as job " in resumed.stdout, resumed.stdout
    assert "2 job(s) still alive from an earlier launch, left to it" in resumed.stdout
    held.release()
    watch_to_the_end(sweep_dir)
    assert_each_job_trained_once(sweep_dir, 2)
    found = assert_slurm_holds_only_what_the_record_names(sweep_dir)
    print(f"\nlauncher SIGKILLed after sbatch, then resumed:\n{resumed.stdout}\nSLURM's jobs of the sweep: {found}")


def test_an_sbatch_that_fails_after_slurm_took_the_job_is_settled_by_its_name(data_root: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "ambiguous"
    # SLURM takes each job, then sbatch says it failed (as a controller that answers too late makes it)
    env = wrapper(
        tmp_path / "bin",
        "sbatch",
        'case "$*" in *--test-only*) exec "$real" "$@";; esac\n"$real" "$@" > /dev/null\n'
        'echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2\nexit 1',
    )
    proc = detached(data_root, sweep_dir, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    adopted = [line for line in proc.stdout.splitlines() if "Socket timed out" in line]
    assert len(adopted) == 2 and all(": recorded" in line for line in adopted), proc.stdout  # the jobs, the results
    watch_to_the_end(sweep_dir)
    assert_each_job_trained_once(sweep_dir, 2)
    assert (sweep_dir / "report.md").is_file()
    found = assert_slurm_holds_only_what_the_record_names(sweep_dir)
    print(f"\nsbatch failing after submission:\n{proc.stdout}\nSLURM's jobs of the sweep: {found}")


def test_a_refused_sbatch_is_one_line_and_its_jobs_show_not_submitted_until_resumed(
    data_root: Path, tmp_path: Path
) -> None:
    sweep_dir = tmp_path / "refused"
    # a policy that sbatch --test-only does not apply (the checks before the launch pass)
    env = wrapper(
        tmp_path / "bin",
        "sbatch",
        'case "$*" in *--test-only*) exec "$real" "$@";; esac\n'
        'echo "sbatch: error: Batch job submission failed: Invalid qos specification" >&2\nexit 1',
    )  # (a refusal for the submit limit is no error: its jobs wait for room, tests/test_limits.py)
    proc = detached(data_root, sweep_dir, env=env)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith("fmsweep: error: sbatch refused fmsweep:refused:") and "Invalid qos" in line, line
    assert line.endswith(f"0 job(s) submitted, 2 not yet: fmsweep resume {sweep_dir} submits them"), line
    saved = record(sweep_dir)
    assert saved["submissions"] == [] and [job["launcher_job"] for job in saved["jobs"]] == [None, None]
    watched = fmsweep("status", str(sweep_dir), "--watch", "--interval", "1")  # nothing will run them: it ends
    assert watched.returncode == 1
    assert "2 not submitted" in watched.stdout and f"fmsweep resume {sweep_dir}" in watched.stdout, watched.stdout
    assert fmsweep("resume", str(sweep_dir)).returncode == 0
    watch_to_the_end(sweep_dir)
    assert_each_job_trained_once(sweep_dir, 2)
    assert_slurm_holds_only_what_the_record_names(sweep_dir)
    print(f"\nsbatch refused:\n{line}\n{watched.stdout}")


def test_a_detached_launch_whose_squeue_fails_says_its_results_job_is_not_submitted_and_resume_submits_one(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    sweep_dir = tmp_path / "silent"
    held.hold(0)
    env = wrapper(
        tmp_path / "bin", "squeue", 'echo "squeue: error: Socket timed out on send/recv operation" >&2\nexit 1'
    )
    proc = detached(data_root, sweep_dir, env=env)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line == (
        "fmsweep: error: SLURM does not answer (squeue: squeue: error: Socket timed out on send/recv operation): the "
        f"job that writes the results is not submitted; fmsweep resume {sweep_dir} submits it"
    )
    assert "submitted SLURM job(s)" in proc.stdout and not (sweep_dir / "report.md").exists()
    assert record(sweep_dir)["finish_job"] is None
    refused = subprocess.run(
        [sys.executable, "-m", "fmsweep.cli", "resume", str(sweep_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert refused.returncode == 2 and "nothing was launched" in refused.stderr, refused.stderr
    resumed = fmsweep("resume", str(sweep_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "still alive from an earlier launch, left to it" in resumed.stdout
    finish = record(sweep_dir)["finish_job"]
    assert finish and f"job {finish} writes the report" in resumed.stdout
    held.release()
    watch_to_the_end(sweep_dir)
    assert_each_job_trained_once(sweep_dir, 2)
    assert (sweep_dir / "report.md").is_file()
    assert_slurm_holds_only_what_the_record_names(sweep_dir)


def test_a_resume_while_the_results_job_waits_makes_it_wait_for_the_new_jobs_too(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    sweep_dir = tmp_path / "reuse"
    held.hold(0)
    assert detached(data_root, sweep_dir).returncode == 0
    finish = record(sweep_dir)["finish_job"]
    held.wait_held(0, runs=2)
    first = record(sweep_dir)["jobs"][0]["launcher_job"]
    subprocess.run(["scancel", first], check=True)
    wait_for("the cancelled job to end", lambda: "cancelled" in fmsweep("status", str(sweep_dir)).stdout)
    resumed = fmsweep("resume", str(sweep_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = record(sweep_dir)["jobs"][0]["launcher_job"]
    assert again != first and record(sweep_dir)["finish_job"] == finish  # the same results job, waiting on
    shown = subprocess.run(["scontrol", "show", "job", finish], capture_output=True, text=True, check=True).stdout
    assert again.partition("_")[0] in shown.split("Dependency=")[1].split()[0], shown
    held.release()
    watch_to_the_end(sweep_dir)
    assert_each_job_trained_once(sweep_dir, 2)
    assert (sweep_dir / "report.md").is_file()
    found = assert_slurm_holds_only_what_the_record_names(sweep_dir)
    assert sorted(state for job_id, state in found if job_id == first) == ["CANCELLED by 0"]


def test_an_sbatch_that_hangs_is_stopped_and_settled_by_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sbatch submits, then hangs (a controller that never answers): it is stopped after SBATCH_TIMEOUT_S and the
    job is found by its name; it runs as submitted (its pickle where submitit put it for an answered sbatch)."""
    import submitit

    from fmsweep.sweep import manifest, submission

    monkeypatch.setattr(submission, "SBATCH_TIMEOUT_S", 1)
    monkeypatch.setattr(submission, "SBATCH_KILL_S", 1)
    # deaf to the stop while it submits, so that it submits whatever the machine's load; then it hangs until killed
    env = wrapper(tmp_path / "bin", "sbatch", 'trap "" TERM\n"$real" "$@" > /dev/null\nexec sleep 600')
    monkeypatch.setenv("PATH", env["PATH"])
    record = manifest.Manifest(sweep_dir=tmp_path, kind="grid", launcher="slurm", command=[], cwd=str(tmp_path))
    entry = submission.begin(record, "results", 1, f"fmsweep:{tmp_path.name}:results")
    ex = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="slurm")
    ex.update_parameters(timeout_min=5, cpus_per_task=1, mem_gb=1)
    [job] = submission.sbatch(record, entry, ex, lambda: [ex.submit(sum, [1, 2, 3])])
    assert entry.id == record.finish_job == str(job.job_id)
    assert job.result() == 6


def test_a_submission_cancelled_before_accounting_knew_it_is_still_found(tmp_path: Path) -> None:
    """A job cancelled right after its sbatch (whose answer the record lacks) has left the queue, and accounting
    records it seconds later: SLURM's controller still knows it (squeue -t all), so it is adopted, never taken for a
    submission that did not happen (and submitted again)."""
    from fmsweep.sweep import manifest, submission

    record = manifest.Manifest(sweep_dir=tmp_path, kind="grid", launcher="slurm", command=[], cwd=str(tmp_path))
    entry = submission.begin(record, "results", 1, f"fmsweep:{tmp_path.name}:results")
    job_id = subprocess.run(
        ["sbatch", "--parsable", "-J", entry.name, "-c1", "--mem=50M", "--begin=now+600", "--wrap", "true"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run(["scancel", job_id], check=True)
    wait_for(
        "the job to leave the queue",
        lambda: not subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip(),
    )
    [line] = submission.settle(record)
    assert entry.id == record.finish_job == job_id and "adopted, not submitted again" in line
