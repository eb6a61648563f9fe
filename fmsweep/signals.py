"""Stop requests: SIGINT, SIGTERM and SIGUSR2 become a flag that the training loop checks between steps,
so that it can save a fresh last.pt before it stops or before SLURM (or a cluster launcher) requeues the job.

Inside a submitit job, submitit installed its handlers before ours: SIGUSR2 checkpoints and requeues the job (its
`scontrol requeue` then sends the job a SIGTERM), SIGTERM only logs ("bypass").

A SIGTERM without an earlier SIGUSR2 is a cancel (`scancel`: the run stops rather than train on until SLURM's
KillWait kills it), unless SLURM says it requeues the job (`requeue_reason`, asked once the run saved). What SLURM
22.05 does, measured on the test cluster (PreemptType=preempt/qos, PreemptMode=REQUEUE):
- a preemption without GraceTime requeues the job at once (squeue: PENDING, Restarts one up; sacct: the attempt
  PREEMPTED), then sends SIGCONT and SIGTERM, and SIGKILL after KillWait;
- a preemption with GraceTime sends SIGCONT and SIGTERM at once (the job's user signal, USR2, instead only where
  SlurmctldParameters holds preempt_send_user_signal: that USR2 is submitit's requeue), and requeues it only when
  the grace time ends: the job RUNNING, its PreemptTime set. A job that ends within its grace time ends for good
  (COMPLETED), not requeued: the run requeues its job itself (`scontrol requeue`), then stops;
- `scontrol requeue` looks like the first case (but sacct says REQUEUED); `scancel` sends SIGCONT and SIGTERM with
  the job COMPLETING, Restarts as they were.
A requeued run leaves no record of an end (it raises Requeued, which its StopRequest turns into SystemExit: no
metrics.json, no submitit result) and writes REQUEUED into each of its unfinished run dirs, for `fmsweep status`:
`requeued (preempted)` while SLURM queues it again.

A launcher job listens from its first instruction (`listen`, once submitit installed its handlers): a signal before
the run's StopRequest exists (its imports, Hydra's set-up, loading the data) waits in `pending`, and the StopRequest
acts on it at once, instead of submitit's bypass swallowing it."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from fmsweep.errors import Interrupted, UserError
from fmsweep.files import atomic_write

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
pending: list[int] = []  # stop signals that came while no StopRequest was there, in order
outer: dict[int, Any] = {}  # the handlers `listen` found (submitit's), which a StopRequest hands signals over to
REQUEUED = ".fmsweep.requeued"  # in a run dir: the SLURM job that stopped to be requeued, why, when (JSON)
SLURM_TIMEOUT_S = 10
SLURM_TRIES = 5
# why, where SLURM requeued the job before its SIGTERM: nothing the job can ask tells the two apart (accounting
# records the attempt PREEMPTED or REQUEUED only once its processes ended); fmsweep.sweep.status asks sacct later
BY_SLURM = "preempted or scontrol requeue"
# a USR2 with less time left than this is SLURM's warning before the time limit (submitit's signal_delay_s, 90 s,
# or 120 s as the hydra launcher sets it, and SLURM's up to 60 s of slack), else someone's `scancel --signal=USR2`
TIME_LIMIT_WARNING_S = 5 * 60
decided: dict[int, str | None] = {}  # requeue_reason's answer, once asked: a requeue happens once


class Requeued(Interrupted):
    """SLURM requeues this job (`why`: preempted, time limit, scontrol requeue, ...): the run saved its last.pt and
    stops with no record of an end; the job exits with `code` and runs again."""

    def __init__(self, signum: int, why: str, code: object = None) -> None:
        super().__init__(signum)
        self.why = why
        self.code = 128 + signum if code is None else code


def listen() -> None:
    """From now on, keep the stop signals that come while no StopRequest is there in `pending`: call as a launcher
    job's first instruction."""
    if not outer:
        for sig in SIGNALS:
            outer[sig] = signal.signal(sig, _keep)


def _keep(signum: int, frame: FrameType | None) -> None:
    pending.append(signum)


def cancel_pending() -> bool:
    """Whether a SIGTERM or SIGINT without a SIGUSR2 before it came while no StopRequest was there: a cancel. A
    SIGTERM by which SLURM requeues the job (`requeue_reason`) is none: the job exits at once (SystemExit), to run
    again (a search's worker between two trials: nothing to save)."""
    if not {signal.SIGTERM, signal.SIGINT} & set(pending) or signal.SIGUSR2 in pending:
        return False
    if signal.SIGINT not in pending and (why := requeue_reason()) is not None:
        log.warning("SLURM job %s requeued (%s) between two runs: it runs again", job_name(), why)
        raise SystemExit(128 + signal.SIGTERM)
    return True


def job_name() -> str | None:
    """This SLURM job as the sweep's record names it (an array task as `12_3`, as lock.holder does); None outside
    SLURM."""
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


def _slurm(*args: str, tries: int = SLURM_TRIES) -> str | None:
    """What a SLURM command printed; None where it is missing or fails (no answer is no evidence). A command that a
    signal killed is run again (up to `tries` times): SLURM signals every process of the job's step, this one too,
    and sends the SIGTERM of a preemption twice, milliseconds apart (measured), the second while the job asks."""
    for _ in range(tries):
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=SLURM_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            log.info("%s: %s", args[0], exc)
            return None
        if done.returncode >= 0:
            break
    if done.returncode != 0:
        log.info("%s: %s", " ".join(args), done.stderr.strip() or f"exit code {done.returncode}")
        return None
    return done.stdout


def job_fields() -> dict[str, str] | None:
    """`scontrol show job` of this SLURM job: JobState, Restarts, PreemptTime, EndTime, ...; None outside SLURM or
    where SLURM does not answer."""
    job_id = os.environ.get("SLURM_JOB_ID")
    out = _slurm("scontrol", "-o", "show", "job", job_id) if job_id else None
    if not out:
        return None
    # `Key=value` pairs, the first of each key (a Comment may hold more); a value with spaces (Command, Comment) is
    # cut at them: the keys read here hold none
    return dict(reversed(re.findall(r"(?:^|\s)(\w+)=(\S*)", out)))


def requeued_since(attempt: str, fields: dict[str, str] | None = None) -> bool:
    """Whether SLURM requeued this job since its attempt `attempt` (SLURM_RESTART_COUNT) began: its Restarts above
    it (`fields` of `job_fields`, asked where None)."""
    restarts = (fields if fields is not None else job_fields() or {}).get("Restarts", "")
    return restarts.isdigit() and attempt.isdigit() and int(restarts) > int(attempt)


def requeue_reason() -> str | None:
    """Why SLURM requeues this job, which got a SIGTERM without a SIGUSR2 before it; None for a cancel (or outside
    SLURM, or where SLURM does not answer). Asked once the run saved, once per process (`decided`):
    - SLURM requeued it already (Restarts above SLURM_RESTART_COUNT): a preemption without grace time or
      `scontrol requeue` (BY_SLURM);
    - its grace time runs (JobState RUNNING, PreemptTime set): a preemption that requeues the job only when the
      grace time ends, and ends it for good if it ends before: the job requeues itself now."""
    if signal.SIGTERM in decided:
        return decided[signal.SIGTERM]
    job_id, fields, why = os.environ.get("SLURM_JOB_ID"), job_fields(), None
    if job_id and fields is not None:
        attempt = os.environ.get("SLURM_RESTART_COUNT", "0")
        if requeued_since(attempt, fields):
            why = BY_SLURM
        elif fields.get("JobState") == "RUNNING" and fields.get("PreemptTime", "None") not in ("None", ""):
            # once: a second requeue would fail (the job pends), and the requeue's own SIGTERM may kill this one as
            # it ends: whether it took is what SLURM says after it
            _slurm("scontrol", "requeue", job_id, tries=1)
            if requeued_since(attempt):
                why = "preempted"
            else:
                log.warning("SLURM job %s preempted, but `scontrol requeue` failed: it ends as a cancel", job_id)
    decided[signal.SIGTERM] = why
    return why


def usr2_reason() -> str:
    """Why a SIGUSR2 came (submitit requeues the job): `preempted` (its PreemptTime set: SLURM's user signal at a
    preemption), `time limit` (SLURM's warning before it: little time left), else `USR2`."""
    fields = job_fields() or {}
    if fields.get("PreemptTime", "None") not in ("None", ""):
        return "preempted"
    try:
        left = time.mktime(time.strptime(fields.get("EndTime", ""), "%Y-%m-%dT%H:%M:%S")) - time.time()
    except ValueError:
        return "USR2"
    return "time limit" if left < TIME_LIMIT_WARNING_S else "USR2"


def mark_requeued(run_dir: Path, why: str, where: str) -> None:
    """Write REQUEUED into `run_dir`: this job, why SLURM requeues it, when, where the run stopped."""
    mark = {"job": job_name(), "why": why, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "where": where}
    try:
        atomic_write(run_dir / REQUEUED, json.dumps(mark) + "\n")
    except UserError as exc:  # status then shows it pending: the requeue goes on
        log.warning("%s", exc)


class StopRequest:
    """Context manager that records the stop signal received; `handle` (or `check`) acts on it once saved.

    A SIGTERM does not replace a SIGUSR2 not yet handled: the requeue it asks for would be lost. A Requeued raised
    inside (the run dirs it stopped named in its `stopped`) leaves as SystemExit, each run dir marked REQUEUED."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.requeue_asked = False  # a SIGUSR2 came: a SIGTERM from now on is the requeue's own
        self.previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def __enter__(self) -> StopRequest:
        for sig in SIGNALS:
            previous = signal.signal(sig, self._record)
            self.previous[sig] = outer[sig] if previous is _keep else previous
        for signum in pending:  # those that came before: acted on at the run's first check
            self._record(signum, None)
        pending.clear()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, _keep if outer else handler)
        if isinstance(exc, Requeued):
            for run_dir, where in exc.stopped.items():
                mark_requeued(run_dir, exc.why, where)
            log.warning(
                "SLURM job %s requeued (%s): %s resume%s from last.pt when it runs again",
                job_name(),
                exc.why,
                ", ".join(str(run_dir) for run_dir in exc.stopped) or "nothing unfinished",
                "s" if len(exc.stopped) == 1 else "",
            )
            raise SystemExit(exc.code) from None

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGUSR2:
            self.requeue_asked = True
        if not (signum == signal.SIGTERM and self.signum == signal.SIGUSR2):
            self.signum = signum

    def handle(self) -> None:
        """Call after saving: raise Interrupted, unless the handler installed before ours takes the signal and
        returns (submitit's requeue on SIGUSR2, its bypass of a SIGTERM that follows a SIGUSR2). A SIGTERM without
        an earlier SIGUSR2 is a cancel, whatever handler was there (Interrupted), unless SLURM requeues the job
        (`requeue_reason`: Requeued). Submitit's requeue on SIGUSR2 in a SLURM job leaves as Requeued too."""
        signum, self.signum = self.signum, None
        assert signum is not None, "handle() is called once a signal came"
        previous = self.previous.get(signum)
        if signum == signal.SIGTERM and not self.requeue_asked:
            why = requeue_reason()
            if why is not None:
                raise Requeued(signum, why)
            raise Interrupted(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            if signum != signal.SIGUSR2 or "SLURM_JOB_ID" not in os.environ:
                previous(signum, None)
                return
            why = usr2_reason()
            try:
                previous(signum, None)  # submitit: checkpoint, `scontrol requeue`, sys.exit
            except SystemExit as exc:
                raise Requeued(signum, why, exc.code) from None
            return
        raise Interrupted(signum)

    def check(self) -> None:
        """`handle` the stop signal received, if any: call where everything the run did is saved."""
        if self.signum is not None:
            self.handle()
