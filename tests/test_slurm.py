"""Sweeps through the submitit launchers: on a live SLURM cluster (marker `slurm`) and as local processes."""

import csv
import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import ROOT, Gate, fast_overrides, needs_cluster, wait_for
from omegaconf import OmegaConf

from fmsweep.sweep import manifest, status

# The shipped GPU preset on the test cluster: its GPU request as shipped (gpus_per_node: 1, on the node's two GPUs
# faked as GRES: tests/slurm/start.sh), one core and little memory per job to fit the machine.
CPU_SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]


def sweep(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmsweep", "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0]))


def metrics(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


def assert_live_status_lines(stdout: str, jobs: list[Path]) -> list[str]:
    """Off a terminal the sweep's live status is one line per change of a job's state: each job (named by the
    overrides it does not share) starts and ends once (a job may start and end between two polls), never a line per
    epoch; the last line counts them all."""
    lines = [line for line in stdout.splitlines() if line.startswith("fmsweep: ") and line.endswith(" failed)")]
    record = manifest.require(jobs[0].parent)
    names = {job.name: status.label(job, status.shared_overrides(record.jobs)) for job in record.jobs}
    for job in jobs:
        mine = [line for line in lines if line.startswith(f"fmsweep: {names[job.name]} ")]
        assert len([line for line in mine if " completed: valid loss " in line]) == 1, lines
        assert len([line for line in mine if " running (" in line]) <= 1, lines
    assert len(lines) <= 2 * len(jobs)
    assert lines[-1].endswith(f"(0 pending, 0 running, {len(jobs)} completed, 0 failed)")
    return lines


def assert_complete(jobs: list[Path], epochs: int) -> None:
    for job in jobs:
        assert metrics(job)["status"] == "completed" and metrics(job)["epochs_run"] == epochs
        assert (job / "best_model.pt").is_file() and list(job.glob("events.out.tfevents.*"))


@pytest.mark.slurm
@needs_cluster
def test_two_by_two_sweep_on_slurm(data_root: Path, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    proc = sweep(
        *CPU_SLURM, *fast_overrides(data_root), "epochs=2", "model=linear,fc", "seed=0,1", f"hydra.sweep.dir={tmp_path}"
    )
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_dirs(tmp_path)
    assert len(jobs) == 4
    assert_complete(jobs, epochs=2)
    assert len(list((tmp_path / ".submitit").glob("*/*_log.out"))) == 4
    lines = assert_live_status_lines(proc.stdout, jobs)
    print(f"\n2x2 SLURM sweep wall time: {wall:.1f} s; its live status:\n" + "\n".join(lines))


def usr2_after_two_epochs(
    args: list[str], sweep_dir: Path, held: Gate
) -> tuple[subprocess.Popen, str, list[Path], datetime]:
    """Launch a SLURM sweep that runs as one SLURM job, send USR2 to that job once a run of it waits at the gate
    after epoch 2, and wait for the sweep: the process, its output, the job dirs and when the signal went."""
    held.hold(2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fmsweep", "-m", *args, f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    job_id = None
    try:
        held.wait_held(2, alive=lambda: proc.poll() is None)
        found = job_dirs(sweep_dir)
        [job_id] = {str(OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.job.id) for job in found}
        signalled = datetime.now()
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        # the held run takes the signal and saves; then the requeued job trains to its end
        wait_for(
            "the signalled job to save",
            lambda: any("Signal 12: saved" in log.read_text() for log in sweep_dir.rglob("__main__.log")),
        )
        held.release()
        out, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
        if job_id is not None:
            subprocess.run(["scancel", job_id])  # no-op once the job ended
    return proc, out, found, signalled


RESUMED = r"\S+ (?:in epoch (\d+) after batch \d+|after epoch (\d+))"  # where a run's resume says it continues


def completed_epochs(within: str | None, after: str | None) -> int:
    """The epochs a resumed run had finished, from RESUMED's groups: in epoch E after a batch, or after epoch E."""
    if within:
        return int(within) - 1
    assert after is not None
    return int(after)


@pytest.mark.slurm
@needs_cluster
def test_usr2_requeues_and_resumes_where_it_stopped(data_root: Path, tmp_path: Path, held: Gate) -> None:
    epochs = 4
    args = [*CPU_SLURM, *fast_overrides(data_root), f"epochs={epochs}", "model=vanilla_cnn"]
    proc, out, [job], signalled = usr2_after_two_epochs(args, tmp_path, held)
    assert proc.returncode == 0, out[-3000:]
    assert_complete([job], epochs=epochs)
    with open(job / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, epochs + 1))
    log = (job / "__main__.log").read_text()
    resumed = re.search(r"\[(.{19}),\d+\]\[fmsweep.train\]\[INFO\] - Resuming from " + RESUMED, log)
    assert resumed, log
    epoch = completed_epochs(*resumed.groups()[1:])
    assert 2 <= epoch < epochs
    assert "Signal 12: saved" in log
    delay = (
        datetime.strptime(resumed.group(1), "%Y-%m-%d %H:%M:%S") - signalled.replace(microsecond=0)
    ).total_seconds()
    print(f"\nUSR2 job resumed at epoch {epoch} (completed epochs), {delay:.0f} s after the signal")


@pytest.mark.slurm
@needs_cluster
def test_usr2_requeues_a_packed_job_and_every_member_resumes(data_root: Path, tmp_path: Path, held: Gate) -> None:
    """Two jobs packed into one SLURM job, signalled with USR2 once one of them finished 2 epochs: the job saves the
    member in training, SLURM requeues it, and the requeued job resumes that member and trains the rest (on the
    CPU a pack trains one member after another). Each member finishes every epoch once, in the job dir it would have
    had unpacked; the live status lists the members."""
    epochs = 4
    args = [*CPU_SLURM, *fast_overrides(data_root), f"epochs={epochs}", "model=vanilla_cnn", "seed=0,1", "pack=2"]
    proc, out, jobs, _ = usr2_after_two_epochs(args, tmp_path, held)  # one SLURM job runs both
    assert proc.returncode == 0, out[-3000:]
    assert [job.name for job in jobs] == [
        f"{i}_batch_size=32,epochs={epochs},model=vanilla_cnn,seed={i}" for i in (0, 1)
    ]
    assert_complete(jobs, epochs=epochs)
    for job in jobs:
        with open(job / "history.csv") as f:
            assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, epochs + 1))
    assert len(list((tmp_path / ".submitit").glob("*/*_log.out"))) == 1
    log = (tmp_path / "packs" / "0-1" / "__main__.log").read_text()
    assert "Signal 12: saved" in log
    resumed = re.findall(r"(\d+)_\S+: Resuming from " + RESUMED, log)
    assert resumed and all(2 <= completed_epochs(*where) < epochs for _, *where in resumed), log
    # the live status lists the members, each one line per change: running, pending while requeued, running again
    lines = [line for line in out.splitlines() if line.startswith("fmsweep: ") and line.endswith(" failed)")]
    for seed in (0, 1):  # each member named by what it does not share with the other
        states = [line.split()[2].rstrip(":") for line in lines if line.startswith(f"fmsweep: seed={seed} ")]
        assert states[-1] == "completed" and states.count("completed") == 1, lines
    assert lines[-1].endswith("(0 pending, 0 running, 2 completed, 0 failed)")
    print("\npacked job requeued by USR2; its live status:\n" + "\n".join(lines))


@pytest.mark.slurm
@needs_cluster
def test_a_detached_rerun_with_nothing_alive_writes_the_results_at_once(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    """A detached sweep whose finish job was cancelled before its jobs ended: its results were never written. A
    detached rerun finds every job completed and nothing alive, so it submits no job that would write them: the
    command writes them before it returns."""
    args = [
        *CPU_SLURM,
        *fast_overrides(data_root),
        "model=linear",
        "seed=0,1",
        "hydra.sweeper.detach=true",
        f"hydra.sweep.dir={tmp_path}",
    ]
    held.hold(1)  # the jobs wait after their epoch until the finish job is gone
    proc = sweep(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    finish = json.loads((tmp_path / "sweep.json").read_text())["finish_job"]
    held.wait_held(1, runs=2)
    subprocess.run(["scancel", finish], check=True)
    held.release()
    watched = subprocess.run(
        [sys.executable, "-m", "fmsweep.cli", "status", str(tmp_path), "--watch", "--interval", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert watched.returncode == 0, watched.stdout[-2000:] + watched.stderr[-2000:]
    assert f"finish job {finish} (writes the results): CANCELLED" in watched.stdout, watched.stdout
    assert not (tmp_path / "report.md").exists()
    again = sweep(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "fmsweep: 2 of 2 jobs completed before, skipped" in again.stdout
    assert "fmsweep: nothing to submit" in again.stdout and "writes the report" not in again.stdout
    assert f"fmsweep: report: {tmp_path / 'report.md'}" in again.stdout and (tmp_path / "report.md").is_file()
    assert json.loads((tmp_path / "sweep.json").read_text())["finish_job"] == finish  # no finish job submitted


@pytest.mark.slurm
@needs_cluster
def test_failed_job_is_reported_and_the_others_complete(data_root: Path, tmp_path: Path) -> None:
    proc = sweep(
        *CPU_SLURM,
        *fast_overrides(data_root),
        "model=fc",
        "optimizer=sgd",
        "optimizer.lr=1e-3,1e30,1e-2",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 1
    jobs = job_dirs(tmp_path)
    assert [metrics(j)["status"] for j in jobs] == ["completed", "failed", "completed"]
    assert "diverged" in metrics(jobs[1])["error"]
    assert "1 job(s)" in proc.stderr and f"{jobs[1].name}: failed" in proc.stderr
    assert re.search(r"log: .*\.submitit/.*_log\.err", proc.stderr)


@pytest.mark.slurm
@needs_cluster
@pytest.mark.parametrize(
    ("request_", "answer"),
    [
        ("hydra.launcher.cpus_per_task=64", "Requested node configuration is not available"),
        ("hydra.launcher.mem_gb=1000", "Requested node configuration is not available"),
    ],
    ids=["64 CPUs on a 2-CPU node", "1000 GB on a 24 GB node"],
)
def test_an_impossible_slurm_request_is_refused_before_anything_is_submitted(
    data_root: Path, tmp_path: Path, request_: str, answer: str
) -> None:
    sweep_dir = tmp_path / f"impossible-{tmp_path.name}"  # a name no other test's jobs carry
    proc = sweep(*CPU_SLURM, request_, *fast_overrides(data_root), "seed=0,1", f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith("fmsweep: error: SLURM cannot run this sweep's jobs (") and answer in line
    assert request_.split(".")[-1] in line and line.endswith("nothing was submitted")
    assert not sweep_dir.exists()
    names = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True, check=True).stdout
    assert sweep_dir.name not in names


@pytest.mark.slow
def test_two_by_two_sweep_with_submitit_local(data_root: Path, tmp_path: Path) -> None:
    proc = sweep(
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        *fast_overrides(data_root),
        "model=linear,fc",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_dirs(tmp_path)
    assert len(jobs) == 4
    assert_complete(jobs, epochs=1)
    assert_live_status_lines(proc.stdout, jobs)


@pytest.mark.slow
def test_rerunning_a_finished_sweep_skips_its_jobs(data_root: Path, tmp_path: Path) -> None:
    args = [
        *fast_overrides(data_root),
        "hydra/launcher=submitit_local",
        "model=linear",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path}",
    ]
    assert sweep(*args).returncode == 0
    before = {j: (j / "metrics.json").read_bytes() for j in job_dirs(tmp_path)}
    again = sweep(*args)
    assert again.returncode == 0
    assert "fmsweep: 2 of 2 jobs completed before, skipped: 0_" in again.stdout
    assert "nothing to do" not in again.stdout  # no launcher job started to find that out
    assert {j: (j / "metrics.json").read_bytes() for j in job_dirs(tmp_path)} == before
    assert len([d for d in (tmp_path / ".submitit").iterdir() if d.name.isdigit()]) == 2
