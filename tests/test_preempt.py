"""Preemption for real, on the test cluster (PreemptType=preempt/qos, PreemptMode=REQUEUE): a sweep's job in QOS
`low` (60 s of GraceTime) or `lowterm` (none), held at the gate after its first epoch, is preempted by a job in QOS
`high` that needs every CPU of the node. SLURM signals it (SIGTERM: the user signal only where
SlurmctldParameters holds preempt_send_user_signal), the run saves its last.pt and stops without recording an end,
SLURM requeues the job (without GraceTime at once; with it, the job requeues itself rather than end within its grace
time, which would end it for good), `fmsweep status` says `requeued (preempted)` while it waits (never failed,
cancelled or stopped), and once the preemptor is gone the job resumes from its last.pt and completes.

And, without a cluster, each way a stop signal reaches a SLURM job as fmsweep.signals tells them apart, with a fake
`scontrol` saying what SLURM said there: requeued already (a preemption without GraceTime, `scontrol requeue`), in a
preemption's grace time (the job requeues itself), cancelled (`scancel`), no answer (a cancel), and submitit's USR2
requeue.

And, on the cluster again, `fmsweep status`, `cancel` and `resume` of a sweep without accounting (sacct failing, as
without slurmdbd): they work from squeue and the files."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, Gate, fast_overrides, needs_cluster, wait_for
from test_cancel import PER_EPOCH, metrics, run_task, sweep_job
from test_crash import SignalledSteps
from test_durable import fmsweep, history_epochs, record
from test_slurm import CPU_SLURM, RESUMED, completed_epochs

import fmsweep.__main__ as entry
from fmsweep import checkpoint, signals, tracking, train
from fmsweep.signals import BY_SLURM, REQUEUED, StopRequest

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


@pytest.mark.slurm
@pytest.mark.slow
@needs_cluster
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
    # SIGTERM; with GraceTime, USR2 (submitit's requeue) where SlurmctldParameters holds preempt_send_user_signal
    stop_signals = "(15|12)" if qos == "low" else "15"
    assert re.search(rf"Signal {stop_signals}: saved \S+ in epoch 2 after batch \d+", log), log
    assert f"SLURM job {job_id} requeued ({'preempted' if qos == 'low' else BY_SLURM})" in log, log
    assert "cancelled" not in log
    attempts = accounting(job_id)
    # without GraceTime SLURM requeued it (PREEMPTED); with it, the job requeued itself within its grace time
    assert attempts[0].split()[0] == ("PREEMPTED" if qos == "lowterm" else "REQUEUED"), attempts
    assert attempts[-1].split()[0] == "COMPLETED", attempts
    job_log = [line for line in log.splitlines() if re.search("Signal 1[25]|requeued|Resuming|run dir", line)]
    launched = out.read_text().splitlines()
    live = [line for line in launched if line.startswith("fmsweep: ") and line.endswith(" failed)")]
    if not detach:
        assert any(" requeued (preempted) (" in line for line in live), launched
    print("\n".join(["job log:", *job_log, "live status:", *live]))


def fake_scontrol(
    bin_dir: Path, monkeypatch: pytest.MonkeyPatch, show: str | None, requeued: str = "", killed: int = 0
) -> Path:
    """This process as SLURM job 41 (its first attempt), with an `scontrol` first on PATH whose `show job` prints
    `show` (fails where None: SLURM does not answer), after a `requeue` `requeued`; the first `killed` calls die of a
    SIGTERM, as SLURM's second SIGTERM of a preemption kills them. The log of its calls."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    log, done = bin_dir / "calls.log", bin_dir / "requeued"
    done.unlink(missing_ok=True)
    answer = f'echo "{show}"' if show is not None else 'echo "slurm_load_jobs error: Unable to contact" >&2; exit 1'
    script = bin_dir / "scontrol"
    script.write_text(
        f'#!/bin/sh\necho "scontrol $*" >> {log}\n'
        f'[ "$(wc -l < {log})" -le {killed} ] && kill -TERM $$\n'
        f'case "$*" in *requeue*) touch {done};; *show*) if [ -e {done} ]; then echo "{requeued}"; else {answer}; fi;; '
        "esac\n"
    )
    script.chmod(0o755)
    log.write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    for name in ("SLURM_RESTART_COUNT", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(signals, "decided", {})  # each test's job asks SLURM afresh
    return log


def scontrol_says(state: str, restarts: int, preempt_time: str = "None", end: str = "2026-12-06T15:06:11") -> str:
    """`scontrol -o show job` of a running job as SLURM 22.05 printed it on the test cluster (abridged)."""
    preempt = f"PreemptEligibleTime=2026-12-06T14:56:11 PreemptTime={preempt_time} " if state == "RUNNING" else ""
    return (
        f"JobId=41 JobName=fmsweep:sweep:ab12.0 UserId=root(0) QOS=low JobState={state} Reason=None "
        f"Dependency=(null) Requeue=1 Restarts={restarts} BatchFlag=1 ExitCode=0:0 StartTime=2026-12-06T14:56:11 "
        f"EndTime={end} {preempt}SuspendTime=None Command=/tmp/sweep/.submitit/41/41_submission.sh"
    )


SAVED = "last.pt saved: resume to finish it"


SHOW = "scontrol -o show job 41"


@pytest.mark.parametrize(
    ("said", "killed", "why", "asked"),
    [
        # preempted without GraceTime, or scontrol requeue; SLURM's second SIGTERM killed the first scontrol
        (scontrol_says("COMPLETING", 1), 1, BY_SLURM, [SHOW, SHOW]),
        # in its GraceTime: the job requeues itself, and SLURM says it took
        (
            scontrol_says("RUNNING", 0, preempt_time="2026-12-06T14:42:54"),
            0,
            "preempted",
            [SHOW, "scontrol requeue 41", SHOW],
        ),
    ],
    ids=["requeued by SLURM", "in its grace time"],
)
def test_a_sigterm_by_which_slurm_requeues_the_job_saves_and_stops_with_no_end_recorded(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, said: str, killed: int, why: str, asked: list[str]
) -> None:
    """A SIGTERM in epoch 2 of a sweep job that SLURM requeues: last.pt saved at that batch, the job exits 143
    without a metrics.json (neither cancelled nor failed: SLURM runs it again), its run dir marked requeued with
    why; in a preemption's grace time the job requeues itself (else it would end for good). The next attempt
    resumes and completes."""
    run_dir = sweep_job(monkeypatch, tmp_path)
    calls = fake_scontrol(tmp_path / "bin", monkeypatch, said, requeued=scontrol_says("COMPLETING", 1), killed=killed)
    cfg = make_cfg("model=fc", "epochs=3", "batch_size=16")
    steps = SignalledSteps(monkeypatch, {PER_EPOCH + 5: signal.SIGTERM})
    run_task(cfg, 128 + signal.SIGTERM)
    last = checkpoint.load(run_dir / checkpoint.LAST)
    assert (last["epoch"], last["partial"]["next"]) == (1, 5)
    assert tracking.read_metrics(run_dir) is None
    mark = json.loads((run_dir / REQUEUED).read_text())
    assert {key: mark[key] for key in ("job", "why", "where")} == {
        "job": "41",
        "why": why,
        "where": f"in epoch 2 of 3; {SAVED}",
    }
    assert calls.read_text().splitlines() == asked
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the next attempt
    assert entry.task(cfg) == metrics(run_dir)["valid_loss"]
    assert metrics(run_dir)["status"] == "completed" and steps.done == 3 * PER_EPOCH


@pytest.mark.parametrize(
    "said",
    [scontrol_says("COMPLETING", 0), scontrol_says("CANCELLED", 0), None],
    ids=["scancel", "cancelled", "no answer"],
)
def test_a_sigterm_that_slurm_does_not_requeue_stays_a_cancel(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, said: str | None
) -> None:
    """`scancel` (the job COMPLETING, its restarts as they were), or no answer from SLURM: a cancel, recorded
    cancelled, never requeued (a `scontrol requeue` after a scancel would undo the cancel)."""
    run_dir = sweep_job(monkeypatch, tmp_path)
    calls = fake_scontrol(tmp_path / "bin", monkeypatch, said)
    SignalledSteps(monkeypatch, {PER_EPOCH + 5: signal.SIGTERM})
    run_task(make_cfg("model=fc", "epochs=3", "batch_size=16"), 128 + signal.SIGTERM)
    assert metrics(run_dir) == {
        "status": "cancelled",
        "error": f"cancelled by SIGTERM (scancel) in epoch 2 of 3; {SAVED}",
    }
    assert not (run_dir / REQUEUED).exists()
    assert calls.read_text().splitlines() == [SHOW]


def test_a_preemption_whose_requeue_slurm_refuses_ends_as_a_cancel(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In its grace time, a job whose `scontrol requeue` did not take (a job submitted --no-requeue): SLURM ends it
    for good when the grace time ends, so it is recorded cancelled, resumable."""
    run_dir = sweep_job(monkeypatch, tmp_path)
    said = scontrol_says("RUNNING", 0, preempt_time="2026-12-06T14:42:54")
    calls = fake_scontrol(tmp_path / "bin", monkeypatch, said, requeued=said)
    SignalledSteps(monkeypatch, {PER_EPOCH + 5: signal.SIGTERM})
    run_task(make_cfg("model=fc", "epochs=3", "batch_size=16"), 128 + signal.SIGTERM)
    assert metrics(run_dir)["status"] == "cancelled" and not (run_dir / REQUEUED).exists()
    assert calls.read_text().splitlines() == [SHOW, "scontrol requeue 41", SHOW]


def test_a_later_attempt_cancelled_is_a_cancel_whatever_its_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restarts count the job's attempts: the second attempt (SLURM_RESTART_COUNT=1) cancelled sees Restarts=1."""
    fake_scontrol(tmp_path / "bin", monkeypatch, scontrol_says("COMPLETING", 1))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert signals.requeue_reason() is None
    monkeypatch.setattr(signals, "decided", {})
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert signals.requeue_reason() == BY_SLURM


def test_a_search_worker_requeued_between_two_trials_exits_to_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM that came while no run was there (a worker between trials): a cancel takes no other trial; one by
    which SLURM requeues the job ends the worker's process at once, to run again."""
    fake_scontrol(tmp_path / "bin", monkeypatch, scontrol_says("COMPLETING", 1))
    monkeypatch.setattr(signals, "pending", [signal.SIGTERM])
    with pytest.raises(SystemExit) as stopped:
        signals.cancel_pending()
    assert stopped.value.code == 128 + signal.SIGTERM
    monkeypatch.setattr(signals, "decided", {})
    fake_scontrol(tmp_path / "bin", monkeypatch, scontrol_says("COMPLETING", 0))
    assert signals.cancel_pending()


@pytest.mark.parametrize(
    ("preempt_time", "left_s", "why"),
    [("2026-12-06T14:42:54", 3600, "preempted"), ("None", 100, "time limit"), ("None", 3600, "USR2")],
    ids=["preemption's user signal", "time limit", "scancel --signal=USR2"],
)
def test_submitits_usr2_requeue_in_a_slurm_job_marks_the_run_requeued(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preempt_time: str, left_s: int, why: str
) -> None:
    """Submitit takes a SIGUSR2 (here a stand-in that exits as its requeue does, sys.exit(-1)): the run saved its
    last.pt first, and its run dir says why SLURM requeues the job; the exit code stays submitit's."""
    end = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + left_s))
    fake_scontrol(tmp_path / "bin", monkeypatch, scontrol_says("RUNNING", 0, preempt_time=preempt_time, end=end))

    def requeue(signum: int, frame: object) -> None:
        sys.exit(-1)

    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        SignalledSteps(monkeypatch, {PER_EPOCH + 5: signal.SIGUSR2})
        with pytest.raises(SystemExit) as stopped:
            train.run(make_cfg("model=fc", "epochs=3", "batch_size=16"), tmp_path)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert stopped.value.code == -1
    assert json.loads((tmp_path / REQUEUED).read_text())["why"] == why
    assert checkpoint.load(tmp_path / checkpoint.LAST)["partial"]["next"] == 5


def test_outside_slurm_a_usr2_and_a_sigterm_are_what_they_were(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SLURM_JOB_ID nothing asks SLURM: a SIGTERM is a cancel (Interrupted)."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(signals, "decided", {})
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGTERM)
        with pytest.raises(signals.Interrupted) as stopped:
            stop.check()
    assert type(stopped.value) is signals.Interrupted


def run_fmsweep(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmsweep.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )


@pytest.mark.slurm
@pytest.mark.slow
@needs_cluster
def test_without_accounting_status_cancel_and_resume_work_from_squeue_and_the_files(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    """sacct fails for every fmsweep command (a wrapper first on PATH), from the launch on: status shows the sweep
    from squeue and the files, cancel stops it (squeue and scancel), and an attached resume trains it to its end
    (submitit's own wait reads the jobs' results, not accounting)."""
    from test_submission import wrapper

    env = wrapper(tmp_path / "nodb", "sacct", 'echo "sacct: error: Problem talking to the database" >&2; exit 1')
    sweep_dir = tmp_path / "noacct"
    args = [*CPU_SLURM, *fast_overrides(data_root), "model=linear", "epochs=2", "seed=0,1"]
    # QOS low: no submit limit of its own, which the other sessions on a shared test cluster may have filled
    args += ["hydra.launcher.qos=low", "hydra.sweeper.detach=true", f"hydra.sweep.dir={sweep_dir}"]
    held.hold(1)
    launched = subprocess.run(
        [sys.executable, "-m", "fmsweep", "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    held.wait_held(1)  # the other job may wait for a GPU that someone else's job holds
    running = run_fmsweep(env, "status", str(sweep_dir))
    assert running.returncode == 0 and " 0 running" not in running.stdout.splitlines()[0], running.stdout
    cancelled = run_fmsweep(env, "cancel", str(sweep_dir))
    assert cancelled.returncode == 0, cancelled.stderr
    assert "2 jobs recorded cancelled" in cancelled.stdout and "finish job" in cancelled.stdout, cancelled.stdout
    shown = run_fmsweep(env, "status", str(sweep_dir))
    assert shown.returncode == 0 and "2 cancelled" in shown.stdout.splitlines()[0], shown.stdout
    assert "seed=0  cancelled: " in shown.stdout and "seed=1  cancelled: " in shown.stdout, shown.stdout
    assert f"resume the 2 unfinished jobs with: fmsweep resume {sweep_dir}" in shown.stdout
    held.release()
    resumed = run_fmsweep(env, "resume", str(sweep_dir), "--attach")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    final = run_fmsweep(env, "status", str(sweep_dir))
    assert "2 completed" in final.stdout.splitlines()[0], final.stdout
    for job in record(sweep_dir)["jobs"]:
        assert json.loads((sweep_dir / job["name"] / "metrics.json").read_text())["status"] == "completed"
    print(f"\nwithout accounting: running\n{running.stdout}cancel: {cancelled.stdout}cancelled\n{shown.stdout}")
    print(f"resumed (last lines)\n{resumed.stdout[-1500:]}final\n{final.stdout}")
