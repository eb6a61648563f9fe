"""Preemption for real, on the test cluster (PreemptType=preempt/qos, PreemptMode=REQUEUE): a sweep's job in QOS
`low` (60 s of GraceTime) or `lowterm` (none), held at the gate after its first epoch, is preempted by a job in QOS
`high` that needs every CPU of the node. SLURM signals it (SIGTERM: the user signal only where
SlurmctldParameters holds preempt_send_user_signal), the run saves its last.pt and stops without recording an end,
SLURM requeues the job (without GraceTime at once; with it, the job requeues itself rather than end within its grace
time, which would end it for good), `fmsweep status` says `requeued (preempted)` while it waits (never failed,
cancelled or stopped), and once the preemptor is gone the job resumes from its last.pt and completes."""

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, Gate, fast_overrides, needs_cluster, wait_for
from test_durable import fmsweep, history_epochs, record
from test_slurm import CPU_SLURM, RESUMED, completed_epochs

from fmsweep.signals import BY_SLURM, REQUEUED

pytestmark = [pytest.mark.slurm, pytest.mark.slow, needs_cluster]
EPOCHS = 3


def squeue_line(job_id: str) -> str:
    """`PENDING BeginTime 1`: squeue's state, reason and restart count of the job ("" once it left the queue)."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-j", job_id, "-O", "State:12,Reason:20,RestartCnt:4"],
        capture_output=True,
        text=True,
    ).stdout
    return " ".join(out.split())


def accounting(job_id: str) -> list[str]:
    """Each attempt of the job as accounting records it: `REQUEUED 0:0`, `PREEMPTED 0:0`, `PENDING 0:0`."""
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-D", "-o", "State,ExitCode", "-j", job_id], capture_output=True, text=True
    ).stdout
    return [line.replace("|", " ") for line in out.splitlines()]


def preemptor() -> str:
    """Submit a job in QOS high that needs every CPU of the node (it waits for any other user's jobs, which it may
    not preempt, to end); its id. The test cancels it."""
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True).stdout
    cpus = max(int(n) for n in sinfo.split())
    args = ["--parsable", "--qos=high", f"--cpus-per-task={cpus}", "--mem=100M", "-t", "10", "-o", "/dev/null"]
    args += ["-J", "fmsweep-test-preemptor", "--wrap", "sleep 600"]
    done = subprocess.run(["sbatch", *args], capture_output=True, text=True, check=True)
    return done.stdout.strip().split(";")[0]


def state(job_id: str) -> str:
    return squeue_line(job_id).split(" ")[0]


@pytest.mark.parametrize(("qos", "detach"), [("low", False), ("lowterm", True)], ids=["low-attached", "lowterm"])
def test_a_preempted_job_is_requeued_shown_requeued_and_resumes_to_its_end(
    data_root: Path, tmp_path: Path, held: Gate, qos: str, detach: bool
) -> None:
    sweep_dir = tmp_path / f"preempt-{qos}"
    args = [*CPU_SLURM, *fast_overrides(data_root), f"hydra.launcher.qos={qos}", f"epochs={EPOCHS}", "model=linear"]
    args += [f"hydra.sweeper.detach={str(detach).lower()}", f"hydra.sweep.dir={sweep_dir}"]
    held.hold(1)
    out = tmp_path / "launch.out"
    with open(out, "w") as launch_out:
        launch = subprocess.Popen(
            [sys.executable, "-m", "fmsweep", "-m", *args], cwd=ROOT, stdout=launch_out, stderr=subprocess.STDOUT
        )
    lines: list[str] = []  # what the test saw, in order: printed at the end for the record
    high = None
    try:
        held.wait_held(1, alive=lambda: launch.poll() is None or detach)
        [job] = record(sweep_dir)["jobs"]
        job_id, job_dir = job["launcher_job"], sweep_dir / job["name"]
        before = fmsweep("status", str(sweep_dir)).stdout
        lines += [f"status before: {before}", f"squeue before: {squeue_line(job_id)}"]
        high = preemptor()
        wait_for("the preemption", lambda: (job_dir / REQUEUED).is_file() and state(job_id) == "PENDING")
        wait_for("the preemptor to run", lambda: state(high) == "RUNNING")
        # accounting records the attempt moments after it ended: until then status cannot tell a preemption without
        # GraceTime from `scontrol requeue` (`requeued (preempted or scontrol requeue)`)
        wait_for("accounting of the attempt", lambda: len(accounting(job_id)) > 1, every=0.5)
        lines += [f"squeue while requeued: {squeue_line(job_id)}", f"sacct while requeued: {accounting(job_id)}"]
        shown = fmsweep("status", str(sweep_dir))
        lines.append(f"status while requeued: {shown.stdout}")
        head, job_line = shown.stdout.splitlines()[:2]
        assert head.startswith("1 job (slurm): 0 pending, 1 requeued, 0 running, 0 completed, 0 failed;"), head
        assert job_line.endswith("  requeued (preempted)"), shown.stdout
        assert not (job_dir / "metrics.json").exists()  # no end recorded: neither cancelled nor failed
        mark = json.loads((job_dir / REQUEUED).read_text())
        # within its grace time the run knew it was preempted (PreemptTime); without, SLURM requeued the job first
        assert mark["job"] == job_id and mark["why"] == ("preempted" if qos == "low" else BY_SLURM), mark
        held.release()
        subprocess.run(["scancel", high], check=True)
        wait_for("the job to run again", lambda: state(job_id) in ("RUNNING", ""))
        if detach:
            watched = fmsweep("status", str(sweep_dir), "--watch", "--interval", "1")
            assert watched.returncode == 0, watched.stdout[-3000:]
        else:
            assert launch.wait(timeout=600) == 0, out.read_text()[-3000:]
        after = fmsweep("status", str(sweep_dir)).stdout
        lines += [f"status after: {after}", f"sacct after: {accounting(job_id)}"]
    finally:
        print(f"\n--- qos={qos}:\n" + "\n".join(lines))
        if high is not None:
            subprocess.run(["scancel", high], check=False)
        if launch.poll() is None:
            launch.send_signal(signal.SIGINT)
            launch.wait(timeout=60)
    assert after.splitlines()[1].split("  ")[-1].startswith("completed: valid loss"), after
    assert json.loads((job_dir / "metrics.json").read_text())["status"] == "completed"
    assert history_epochs(job_dir) == list(range(1, EPOCHS + 1))
    log = (job_dir / "__main__.log").read_text()
    resumed = re.search(r"Resuming from " + RESUMED, log)
    assert resumed and completed_epochs(*resumed.groups()) >= 1, log
    assert re.search(r"Signal 15: saved \S+ in epoch 2 after batch \d+", log), log
    assert f"SLURM job {job_id} requeued ({'preempted' if qos == 'low' else BY_SLURM})" in log, log
    assert "cancelled" not in log
    attempts = accounting(job_id)
    # without GraceTime SLURM requeued it (PREEMPTED); with it, the job requeued itself within its grace time
    assert attempts[0].split()[0] == ("PREEMPTED" if qos == "lowterm" else "REQUEUED"), attempts
    assert attempts[-1].split()[0] == "COMPLETED", attempts
    job_log = [line for line in log.splitlines() if re.search("Signal 15|requeued|Resuming|run dir", line)]
    launched = out.read_text().splitlines()
    live = [line for line in launched if line.startswith("fmsweep: ") and line.endswith(" failed)")]
    if not detach:
        assert any(" requeued (preempted) (" in line for line in live), launched
    print("\n".join(["job log:", *job_log, "live status:", *live]))
