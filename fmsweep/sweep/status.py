"""What each job of a sweep is doing, read from the sweep dir alone: its record (sweep.json), the job dirs, the
run-dir locks, and SLURM's queue and accounting where it answers. The one reading code behind `fmsweep status`,
the live status of a launching command and the rerun logic (`alive`).

`fmsweep status DIR [--watch] [--interval SECONDS]` prints the table; with --watch it follows the sweep until it is
over. Nothing here imports torch, Hydra or OmegaConf (a search's objective is read with YAML): the command answers
at once, on a laptop holding a copy of the sweep dir too (without SLURM's commands the files alone decide). A job's
files are read by fmsweep.results.runs, as the report reads them."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from fmsweep.errors import ArgumentParser, UserError, exit_with
from fmsweep.results.runs import METRICS, is_number, read_history, read_metrics, read_objective
from fmsweep.signals import BY_SLURM, REQUEUED
from fmsweep.sweep import lock, submission
from fmsweep.sweep.manifest import LAUNCH_LOCK, JobRecord, Manifest, load, require
from fmsweep.sweep.slurm import Silent, slurm_output

STATES = (
    "pending",
    "not submitted",
    "requeued",
    "running",
    "completed",
    "pruned",
    "failed",
    "cancelled",
    "stopped",
    "ended",
    "unknown",
)
# nothing of the job runs any more, or will before a resume
FINAL = ("completed", "pruned", "failed", "cancelled", "stopped", "ended", "not submitted")
SHOWN_FIRST = (
    "running",
    "unknown",
    "failed",
    "stopped",
    "ended",
    "cancelled",
    "not submitted",
    "requeued",
    "pending",
    "completed",
    "pruned",
)  # block order
ALWAYS_COUNTED = ("pending", "running", "completed", "failed")  # the counts name the others only when there are any
ERROR_CHARS = 120  # of an error or a cancel's reason: `cancelled by SIGTERM (scancel) in epoch 3 of 10; ...`
# SLURM's states of a job that ended (squeue lists them for a while after the end, sacct for good)
SLURM_ENDED = {
    "COMPLETED",
    "CANCELLED",
    "FAILED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "SPECIAL_EXIT",
    "REVOKED",
}
SLURM_FAILED = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
PROC_LOCKS = Path("/proc/locks")
CONFIG = Path(".hydra") / "config.yaml"  # written as a job starts
# the valid figures one chooses on (search.OBJECTIVES): a search's objective is shown first, else the valid loss, by
# which the report ranks a grid's settings and each run keeps its best epoch
OBJECTIVES = ("valid_loss", "valid_acc")
# a float literal as Hydra reads one (its grammar's FLOAT, less underscores, inf and nan)
FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+(?=[eE]))([eE][+-]?\d+)?")


@dataclass(frozen=True)
class Status:
    """What is known of a job: its state (one of STATES) and a detail: SLURM's reason for a pending job, the
    progress of a running one, the valid figures of a completed one's best epoch, the error of a failed one, the
    reason of a cancelled one, the epoch a stopped one reached, why SLURM requeued one (preempted, time limit, ...),
    where one that ended without accounting's word on how stood."""

    state: str
    detail: str = ""

    def text(self, progress: bool = True) -> str:
        """`pending (Priority)`, `requeued (preempted)`, `running: epoch 2 of 10, ...`; without `progress`, a
        running job is `running`."""
        if not self.detail or (self.state == "running" and not progress):
            return self.state
        return (
            f"{self.state} ({self.detail})" if self.state in ("pending", "requeued") else f"{self.state}: {self.detail}"
        )


class SlurmJob(NamedTuple):
    """SLURM's view of a job: its state (the first word of sacct's `CANCELLED by 0`), squeue's reason or sacct's
    whole state, and sacct's exit code ("" from squeue)."""

    state: str
    reason: str
    exit_code: str = ""

    def text(self) -> str:
        """`PENDING (Dependency)`, `RUNNING`, `CANCELLED by 0`, `FAILED, exit code 1:0`."""
        if self.state in SLURM_ENDED:
            return self.reason + (f", exit code {self.exit_code}" if self.exit_code not in ("", "0:0") else "")
        return self.state + (f" ({self.reason})" if self.reason not in ("", "None") else "")


@dataclass(frozen=True)
class View:
    """One look at a sweep: each job's status by number, the jobs that something still runs or queues (their
    launcher job, a process holding their run dir), and the finish job's SLURM state (None without one) and
    whether SLURM still queues or runs it; how many of a search's workers are queued or run."""

    statuses: dict[int, Status]
    alive: set[int]
    finish: str | None = None
    finish_alive: bool = False
    workers_alive: int = 0
    silent: str | None = None  # why SLURM's view is missing (squeue failed), None when it answered or is absent
    launching: bool = False  # whether a command launches the sweep now (it holds the launch lock)
    # why accounting's view is missing (sacct failed or is absent) where squeue answered and some job left its
    # queue: how those ended is unknown; None when accounting answered or was not asked
    unaccounted: str | None = None


class Stale(Collection[int]):
    """Jobs being launched again now, with what stood for them when this was made: a failed, cancelled or stopped
    result of theirs belongs to the earlier launch until something of the new one shows: the run took its run dir's
    lock (which rewrites the lock file), wrote a metrics.json, or the record names a new launcher job for it.
    Hydra's rewriting .hydra/ is not enough: a run takes its lock only after its imports, and the earlier failure
    would show meanwhile. A plain collection of job numbers, read at once, counts as unchanged."""

    def __init__(self, manifest: Manifest, nums: Iterable[int]) -> None:
        jobs = {job.num: job for job in manifest.jobs}
        self.marks = {num: _mark(manifest.sweep_dir, jobs[num]) if num in jobs else None for num in nums}

    def __contains__(self, num: object) -> bool:
        return num in self.marks

    def __iter__(self) -> Iterator[int]:
        return iter(self.marks)

    def __len__(self) -> int:
        return len(self.marks)

    def changed(self, sweep_dir: Path, job: JobRecord) -> bool:
        return job.num in self.marks and self.marks[job.num] != _mark(sweep_dir, job)


def _mtime(path: Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _mark(sweep_dir: Path, job: JobRecord) -> tuple[int | str | None, ...]:
    run_dir = sweep_dir / job.name
    return _mtime(run_dir / lock.LOCK), _mtime(run_dir / METRICS), job.launcher_job


def squeue(job_ids: list[str]) -> dict[str, SlurmJob] | None:
    """SLURM's state and reason of each job it still lists, by job id; None without squeue, Silent when it does not
    answer. `-r` gives each array task its own line: without it, pending tasks share one (`12_[0-5%64]`)."""
    out = slurm_output(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(job_ids)])
    if out is None:
        return None
    fields = (line.split("|") for line in out.splitlines())
    # the reason of a job that ended is no reason: its state stands in for it, as in sacct's view
    return {f[0]: SlurmJob(f[1], f[1] if f[1] in SLURM_ENDED else f[2]) for f in fields if len(f) == 3}


def sacct(job_ids: list[str]) -> dict[str, SlurmJob] | None:
    """SLURM's accounting of each job: its state (`CANCELLED by 0` as reason) and exit code; None where sacct is
    not installed, Silent where it does not answer (no slurmdbd: `sacct: error: Problem talking to the database`)."""
    out = slurm_output(["sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode,Reason", "-j", ",".join(job_ids)])
    if out is None:
        return None
    fields = (line.split("|") for line in out.splitlines())
    return {f[0]: SlurmJob(f[1].split()[0], f[1], f[2]) for f in fields if len(f) == 4 and f[1]}


def slurm_look(job_ids: list[str], accounting: bool = True) -> tuple[dict[str, SlurmJob], str | None]:
    """`slurm_view`, and why accounting's part of it is missing where it was needed: squeue answered, and lists
    some of the jobs no more (or as ended), but sacct failed (`sacct: <its error>`) or is not installed; those
    jobs ended, and how only accounting would say. None where accounting answered, was not asked or not needed."""
    if not job_ids:
        return {}, None
    listed = squeue(job_ids)
    view = listed or {}
    ended = [i for i in job_ids if i not in view or view[i].state in SLURM_ENDED]
    if not accounting or not ended:
        return view, None
    try:
        found = sacct(ended)
    except Silent as exc:  # sacct's own error starts `sacct: error: ...`: once is enough
        said = str(exc).removeprefix("sacct: ") if str(exc).startswith("sacct: sacct:") else str(exc)
        return view, said if listed is not None else None
    if found is None:
        return view, "sacct not found" if listed is not None else None
    view.update(found)
    return view, None


def requeue_causes(job_ids: list[str]) -> dict[str, str]:
    """Why SLURM requeued each job that a run could not tell (fmsweep.signals.BY_SLURM), from accounting's record
    of the attempt before the one queued now: `preempted` (PREEMPTED) or `scontrol requeue` (REQUEUED); {} where
    accounting does not answer."""
    try:
        out = slurm_output(["sacct", "-n", "-P", "-X", "-D", "-o", "JobID,State", "-j", ",".join(job_ids)]) or ""
    except Silent:
        return {}
    attempts: dict[str, list[str]] = {}
    for line in out.splitlines():
        job_id, _, state = line.partition("|")
        attempts.setdefault(job_id, []).append(state.split(" ")[0])
    causes = {"PREEMPTED": "preempted", "REQUEUED": "scontrol requeue"}
    return {i: causes[states[-2]] for i, states in attempts.items() if len(states) > 1 and states[-2] in causes}


def slurm_view(job_ids: list[str], accounting: bool = True) -> dict[str, SlurmJob]:
    """SLURM's view of `job_ids`: squeue's, and for the jobs it no longer lists (or lists as ended), sacct's; {}
    for what neither answers; Silent when squeue fails."""
    return slurm_look(job_ids, accounting)[0]


def _pid_alive(job_id: str | None) -> bool:
    """Whether the process `job_id` names (a pid, under submitit_local) exists."""
    try:
        pid = int(job_id or "")
    except ValueError:
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class Locks:
    """Which run dirs' locks (or a sweep's launch lock) are held now. A lock file naming a process of another host
    is held while its heartbeat is fresh (lock.held_elsewhere): this host cannot see that host's locks. On this
    host, /proc/locks lists every lock held: reading it disturbs none, whereas taking a lock to test it, even for an
    instant, can make a job that starts at that instant find its run dir busy. Where /proc/locks cannot say (no
    /proc, or a file system whose device numbers it names apart from stat's), lock.holder_of tests the lock."""

    def __init__(self, ended: Callable[[str], bool] = lambda job_id: False) -> None:
        self.ended = ended  # whether SLURM says the job of this id ended: a lock file naming it names no live run
        self.held: set[tuple[int, int, int]] | None = None
        self.inodes: set[int] = set()
        try:
            text = PROC_LOCKS.read_text()
        except OSError:
            return
        self.held = set()
        for line in text.splitlines():
            fields = line.split()  # `3: FLOCK  ADVISORY  WRITE 14710 fe:00:2154518 0 EOF`; `-> ` marks a waiter
            with contextlib.suppress(ValueError, IndexError):
                if fields[1] != "->":
                    major, minor, inode = fields[5].split(":")
                    self.held.add((int(major, 16), int(minor, 16), int(inode)))
                    self.inodes.add(int(inode))

    def held_in(self, run_dir: Path) -> bool:
        return self.held_at(run_dir / lock.LOCK)

    def held_at(self, path: Path) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        if lock.held_elsewhere(path, self.ended):
            return True
        if self.held is not None:
            if (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in self.held:
                return True
            if st.st_ino not in self.inodes:
                return False
        try:
            return lock.holder_of(path) is not None
        except OSError:
            return False


def _progress(run_dir: Path) -> tuple[int, dict[str, float] | None] | None:
    """(the last epoch, the best epoch's row so far: the lowest valid loss, the epoch a run keeps) of history.csv;
    (0, None) before the first epoch ends; None when it cannot be read."""
    try:
        rows = read_history(run_dir)
        return (int(rows[-1]["epoch"]), min(rows, key=lambda row: row["valid_loss"])) if rows else (0, None)
    except (OSError, ValueError, KeyError):
        return None


def _percent(value: object) -> str:
    return f"{100 * value:.2f}" if is_number(value) else "?"


def _one_line(text: object) -> str:
    return " ".join(str(text or "").split())[:ERROR_CHARS]


def objective(manifest: Manifest) -> str:
    """The figure the sweep chooses on (one of OBJECTIVES): a search's objective as its first trial that started
    records it, else the valid loss."""
    if manifest.kind == "search":
        for job in manifest.jobs:
            found = read_objective(manifest.sweep_dir / job.name)
            if found in OBJECTIVES:
                return found
    return OBJECTIVES[0]


def figure(key: str, value: object) -> str:
    """`valid loss 0.3312` or `valid acc 88.02 %`, the figure `key` (one of OBJECTIVES); `?` for no number."""
    if key == "valid_acc":
        return f"valid acc {_percent(value)} %"
    return f"valid loss {value:.4f}" if is_number(value) else "valid loss ?"


def figures(values: Mapping[str, object], first: str) -> str:
    """`valid loss 0.3312, valid acc 88.02 %`: the figures of OBJECTIVES in `values`, `first` first."""
    return ", ".join(figure(key, values.get(key)) for key in sorted(OBJECTIVES, key=lambda key: key != first))


def _running(run_dir: Path, epochs: int, chosen_on: str) -> Status:
    """`epoch 3 of 10, best valid loss 0.4012 (epoch 2)` from history.csv: the figure `chosen_on` of the epoch the
    run would end with now, as the completed line gives it; `starting` before the first epoch ends."""
    progress = _progress(run_dir)
    if progress is None:
        return Status("running", "history.csv unreadable")
    epoch, best = progress
    if best is None:
        return Status("running", "starting")
    return Status(
        "running",
        f"epoch {epoch} of {epochs}, best {figure(chosen_on, best.get(chosen_on))} (epoch {best['epoch']:.0f})",
    )


def _completed(metrics: dict[str, Any], chosen_on: str) -> Status:
    """`valid loss 0.3312, valid acc 88.02 % (best epoch 5 of 5)`: the figures one chooses on, never the test
    split's, which are an outcome (the report gives them)."""
    best, run = (metrics.get(key) if is_number(metrics.get(key)) else "?" for key in ("best_epoch", "epochs_run"))
    return Status("completed", f"{figures(metrics, chosen_on)} (best epoch {best} of {run})")


def _short(metrics: dict[str, Any], job: JobRecord) -> bool:
    """Whether a completed result ran fewer epochs than the record asks (a sweep that continues it to more)."""
    run = metrics.get("epochs_run")
    return isinstance(run, int) and run < job.epochs and not metrics.get("stopped_early")


def requeued(run_dir: Path, job: JobRecord) -> str | None:
    """Why SLURM requeued the job (`preempted`, `time limit`, ...), as its run wrote it when it stopped to be
    requeued (fmsweep.signals.REQUEUED); None without such a mark of its launcher job, or with one older than the
    run dir's lock file, which a run that started since then rewrote."""
    path = run_dir / REQUEUED
    try:
        marked = os.stat(path).st_mtime_ns
        mark = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(mark, dict) or mark.get("job") != job.launcher_job:
        return None
    locked = _mtime(run_dir / lock.LOCK)
    return None if locked is not None and locked > marked else _one_line(mark.get("why")) or "by SLURM"


def job_status(
    sweep_dir: Path,
    job: JobRecord,
    slurm: SlurmJob | None,
    alive: bool,
    stale: Stale | None,
    chosen_on: str,
    unaccounted: bool = False,
) -> Status:
    """The status of one job by read's rules; `slurm` is SLURM's view of its launcher job, `alive` whether its
    process runs or holds its run dir's lock, `stale` given when the job is being launched again, `chosen_on` the
    sweep's objective (shown first), `unaccounted` whether its launcher job left squeue and accounting did not
    answer (how it ended is unknown)."""
    run_dir = sweep_dir / job.name
    metrics = read_metrics(run_dir)
    result = metrics.get("status")
    if result == "completed" and not _short(metrics, job):
        return _completed(metrics, chosen_on)
    if result == "pruned":
        return Status("pruned", f"at epoch {metrics.get('pruned', '?')}")
    queued = slurm is not None and slurm.state not in SLURM_ENDED
    if queued and slurm is not None and slurm.state == "PENDING":
        why = requeued(run_dir, job)
        return Status("requeued", why) if why else Status("pending", slurm.reason if slurm.reason != "None" else "")
    if queued or alive:
        return _running(run_dir, job.epochs, chosen_on)
    ended = slurm.state if slurm is not None else ""
    if result == "cancelled":
        status = Status("cancelled", _one_line(metrics.get("reason") or metrics.get("error")))
    elif job.cancelled:
        status = Status("cancelled", "by fmsweep cancel")
    elif ended == "CANCELLED" and slurm is not None:
        status = Status("cancelled", f"SLURM {slurm.text()}")
    elif result == "failed":
        status = Status("failed", _one_line(metrics.get("error")))
    elif ended in SLURM_FAILED and slurm is not None:
        code = f", exit code {slurm.exit_code}" if slurm.exit_code else ""
        status = Status("failed", f"SLURM {slurm.reason}{code}")
    elif unaccounted:  # left squeue: neither alive nor pending, and only accounting knows how it ended
        progress = _progress(run_dir)
        started = os.path.exists(run_dir / CONFIG)
        where = f"epoch {progress[0] if progress else '?'} of {job.epochs}" if started else "before it started"
        status = Status("ended", f"{where} (no accounting: how unknown)")
    elif os.path.exists(run_dir / CONFIG):
        progress = _progress(run_dir)
        status = Status("stopped", f"epoch {progress[0] if progress else '?'} of {job.epochs}")
    else:
        return Status("pending")
    if stale is not None and not stale.changed(sweep_dir, job):
        return Status("pending")  # the earlier launch's result: this launch has not reached the job yet
    return status


def look(manifest: Manifest, stale: Collection[int] = (), accounting: bool = True) -> View:
    """One look at the sweep: one squeue call (and one sacct call, with `accounting`) under SLURM, a pid test per
    launcher job under submitit_local, the held locks, then each job's dir. Submissions whose answer the record
    lacks are looked up by name (fmsweep.sweep.submission), without writing the record."""
    slurm: dict[str, SlurmJob] = {}
    silent = unaccounted = None
    if manifest.launcher == "slurm" and manifest.pending():
        manifest = copy.deepcopy(manifest)
        try:
            submission.settle(manifest)
        except Silent as exc:
            silent = str(exc)
    ids = manifest.launcher_jobs()
    if manifest.launcher == "slurm" and not silent:
        try:
            slurm, unaccounted = slurm_look([*ids, *([manifest.finish_job] if manifest.finish_job else [])], accounting)
        except Silent as exc:
            silent = str(exc)
    pids = {i: _pid_alive(i) for i in ids} if manifest.launcher == "submitit_local" else {}
    locks = Locks(lambda job_id: job_id in slurm and slurm[job_id].state in SLURM_ENDED)
    launching = locks.held_at(manifest.sweep_dir / LAUNCH_LOCK)
    marks = stale if isinstance(stale, Stale) else Stale(manifest, stale)
    chosen_on = objective(manifest)
    statuses, alive = {}, set()
    for job in manifest.jobs:
        run_dir = manifest.sweep_dir / job.name
        queued = slurm.get(job.launcher_job or "")
        held = locks.held_in(run_dir)
        process = bool(pids.get(job.launcher_job or "")) or held
        if manifest.kind == "search" and not held and read_metrics(run_dir).get("status") in ("failed", "cancelled"):
            queued, process = None, False  # its worker lives on with other trials: the trial itself ended
        if process or (queued is not None and queued.state not in SLURM_ENDED):
            alive.add(job.num)
        statuses[job.num] = job_status(
            manifest.sweep_dir,
            job,
            queued,
            process,
            marks if job.num in marks else None,
            chosen_on,
            unaccounted=bool(unaccounted and job.launcher_job and job.launcher_job not in slurm),
        )
        if silent and (job.launcher_job or job.submission) and statuses[job.num].state in ("pending", "stopped"):
            statuses[job.num] = Status("unknown", silent)  # SLURM may queue or run it: no guess
        elif statuses[job.num] == Status("pending") and manifest.launcher != "basic" and not job.launcher_job:
            # a launch that submits it now holds the launch lock; else nothing will, until a resume
            being = launching and not job.waiting  # a job that waits for room is not what a launch submits now
            statuses[job.num] = Status("pending", "being submitted") if being else Status("not submitted")
    # requeued by SLURM before the run's SIGTERM: preempted or `scontrol requeue`, which only accounting tells
    unsure = [job for job in manifest.jobs if statuses[job.num] == Status("requeued", BY_SLURM) and job.launcher_job]
    causes = requeue_causes(sorted({str(job.launcher_job) for job in unsure})) if accounting and unsure else {}
    for job in unsure:
        if job.launcher_job in causes:
            statuses[job.num] = Status("requeued", causes[str(job.launcher_job)])
    finish = slurm.get(manifest.finish_job or "")
    if alive or (finish is not None and finish.state not in SLURM_ENDED):  # the sweep's jobs submit the waiting ones
        for job in manifest.jobs:
            if job.waiting and statuses[job.num] == Status("not submitted"):
                statuses[job.num] = Status("not submitted", "waiting for room under the cluster's submit limit")
    workers = sum(bool(pids.get(w)) or (w in slurm and slurm[w].state not in SLURM_ENDED) for w in manifest.workers)
    if not manifest.finish_job:
        return View(statuses, alive, workers_alive=workers, silent=silent, launching=launching, unaccounted=unaccounted)
    if finish is None:
        why = f"unknown ({silent})" if silent else "unknown (SLURM does not answer)"
        why = "ended (no accounting: how unknown)" if unaccounted else why
        return View(
            statuses, alive, why, workers_alive=workers, silent=silent, launching=launching, unaccounted=unaccounted
        )
    return View(
        statuses,
        alive,
        finish.text(),
        finish.state not in SLURM_ENDED,
        workers,
        silent,
        launching,
        unaccounted=unaccounted,
    )


def read(manifest: Manifest, stale: Collection[int] = ()) -> dict[int, Status]:
    """Each job's status by job number. The rules, in order: metrics.json completed (unless it ran fewer epochs
    than recorded) or pruned; SLURM's PENDING (with its reason), or requeued where the job's run stopped for SLURM
    to requeue it (its REQUEUED mark says why: `requeued (preempted)`); running while SLURM lists the job in any other
    state that is not an end, its process (submitit_local's pid) lives, or its run dir's lock is held; cancelled
    (metrics.json, the record's `cancelled`, sacct's CANCELLED); failed (metrics.json's error, or sacct's FAILED,
    TIMEOUT, OUT_OF_MEMORY, ... with its exit code); ended where its launcher job left squeue and accounting does
    not answer (how: unknown, never a guess); stopped (started: .hydra/config.yaml, but none of the above);
    else pending, or, under a submitit launcher with no launcher job, not submitted (`pending (being submitted)`
    while a launch holds the sweep's launch lock). A failed, cancelled or stopped job in `stale` is pending until
    its new launch shows (see Stale); with SLURM silent, a job it may hold is unknown."""
    return look(manifest, stale).statuses


def alive(manifest: Manifest) -> set[int]:
    """The jobs that something still queues or runs, or may: their launcher job is pending or running (squeue, or
    the pid under submitit_local), a process holds their run dir's lock, or SLURM did not answer for them (unknown).
    A rerun must skip them."""
    view = look(manifest, accounting=False)
    return view.alive | {num for num, status in view.statuses.items() if status.state == "unknown"}


def counts(states: Iterable[str]) -> str:
    """`3 pending, 2 running, 1 completed, 0 failed`; pruned, cancelled and stopped only when there are any."""
    n = Counter(states)
    return ", ".join(f"{n[state]} {state}" for state in STATES if state in ALWAYS_COUNTED or n[state])


def left_out(states: list[str]) -> str:
    """`… 14 more (2 running, 12 pending)`: the jobs a block too tall for the terminal leaves out, by state."""
    n = Counter(states)
    return f"… {len(states)} more ({', '.join(f'{n[state]} {state}' for state in SHOWN_FIRST if n[state])})"


class Line(NamedTuple):
    """A job as a status line shows it: its number, its name (`label`) and its status."""

    num: int
    name: str
    status: Status


def display(override: str) -> str:
    """`override` as the report shows it (space.display_overrides): a float value to 4 significant digits where
    that is shorter (a search's optimizer.lr=0.006431 for optimizer.lr=0.006431172050131994), else as written.
    Without Hydra's parser, which takes status 0.15 s to import and 0.2 ms an override."""
    key, _, written = override.partition("=")
    if not FLOAT.fullmatch(written):
        return override
    short = f"{float(written):.4g}"
    short = short if any(c in short for c in ".en") else f"{short}.0"  # 3.0, not the int 3
    return f"{key}={short}" if len(short) < len(written) else override


def shared_overrides(jobs: list[JobRecord]) -> list[str]:
    """The overrides every job has, sorted as job dir names sort them: said once, in the table's head. None for a
    lone job, which its own overrides name."""
    if len(jobs) < 2:
        return []
    return sorted(set.intersection(*(set(job.overrides) for job in jobs)))


def label(job: JobRecord, shared: list[str]) -> str:
    """The job's name in a status line: its overrides but the shared ones (`reg=l2,seed=1`), as the report's job
    table names it."""
    own = sorted(o for o in job.overrides if o not in shared)
    return ",".join(display(o) for o in own) or ("(shared overrides only)" if shared else "(defaults)")


def named(manifest: Manifest, statuses: dict[int, Status]) -> tuple[list[str], list[Line]]:
    """The line naming the overrides every job shares (none where there are none) and each job's Line, in the
    sweep's order."""
    shared = shared_overrides(manifest.jobs)
    noun = "trial" if manifest.kind == "search" else "job"
    head = [f"every {noun}: {' '.join(display(o) for o in shared)}"] if shared else []
    return head, [Line(job.num, label(job, shared), statuses[job.num]) for job in manifest.jobs]


def job_lines(jobs: list[Line]) -> list[str]:
    """`name  state: detail` per job, the names padded to one width."""
    width = max((len(job.name) for job in jobs), default=0)
    return [f"{job.name.ljust(width)}  {job.status.text()}" for job in jobs]


def fit(head: list[str], jobs: list[Line], tail: list[str], width: int, height: int) -> list[str]:
    """A block for a terminal of `height` rows and `width` columns: `head`, the jobs that need watching first (by
    SHOWN_FIRST, else in their order), a line counting those left out where they do not all fit, `tail`."""
    jobs = sorted(jobs, key=lambda job: SHOWN_FIRST.index(job.status.state))
    lines = job_lines(jobs)
    room = height - len(head) - len(tail)
    if len(lines) > room:
        shown = max(room - 1, 0)
        lines = [*lines[:shown], left_out([job.status.state for job in jobs[shown:]])]
    return [line[:width] for line in [*head, *lines, *tail][:height]]


def terminal() -> tuple[int, int]:
    """The columns and rows a block may use: a line as wide as the terminal would wrap, and the row below the block
    stays free (the cursor's): a block that scrolled would leave a copy of itself in the scrollback at each redraw."""
    size = shutil.get_terminal_size()
    return size.columns - 1, max(size.lines - 1, 1)


class Screen:
    """A block of lines on a terminal, redrawn in place over the previous one when it changed."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.drawn: list[str] = []

    def draw(self, lines: list[str]) -> None:
        if lines == self.drawn:
            return
        up = f"\x1b[{len(self.drawn)}F" if self.drawn else ""
        clear = "\x1b[J" if len(lines) < len(self.drawn) else ""  # the rows a taller block left below this one
        self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines) + clear)
        self.stream.flush()
        self.drawn = lines


class Changes:
    """Off a terminal: one line per job whose state changed since it was last reported, with the counts after that
    change (`fmsweep: lr=0.1 running (2 pending, 1 running, 0 completed, 0 failed)`). Jobs are told apart by number:
    a search's new trials can change the overrides every job shares, and so the others' names."""

    def __init__(self, reported: dict[int, str] | None = None) -> None:
        self.reported = dict(reported or {})  # the state each job was last reported in, by number; pending if absent

    def write(self, stream: TextIO, jobs: list[Line], others: Iterable[str] = ()) -> None:
        others, changed = list(others), False
        for job in jobs:
            if job.status.state != self.reported.get(job.num, "pending"):
                reported = {**self.reported, job.num: job.status.state}
                total = counts([*others, *(reported.get(j.num, "pending") for j in jobs)])
                stream.write(f"fmsweep: {job.name} {job.status.text(progress=False)} ({total})\n")
                self.reported, changed = reported, True  # after the write: a failed one is retried at the next poll
        if changed:
            stream.flush()


def results(sweep_dir: Path) -> list[str]:
    """The sweep's results once written: report.md and its line naming the best setting (chosen on validation),
    ensemble.json's accuracy on its split: on the test split, that setting's outcome, which chose nothing."""
    lines = []
    report = sweep_dir / "report.md"
    with contextlib.suppress(OSError, ValueError):
        best = next(
            (
                line.strip().strip("*")
                for line in report.read_text().splitlines()
                if line.startswith(("**Best setting on validation", "**One setting"))
            ),
            "",
        )
        lines.append(f"report: {report}" + (f": {best}" if best else ""))
    ensemble = sweep_dir / "ensemble.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
        data = json.loads(ensemble.read_text())
        outcome = " (an outcome: the models were chosen on validation)" if data["split"] == "test" else ""
        lines.append(
            f"ensemble: {ensemble}: {len(data['members'])} models, {data['split']} acc "
            f"{_percent(data['average']['acc'])} %{outcome}"
        )
    return lines


def table(manifest: Manifest, view: View) -> tuple[list[str], list[Line], list[str]]:
    """The status table as its head (the counts, the overrides every job shares), its jobs (in the sweep's order,
    each named by its own overrides) and its closing lines (the results, the finish job of a detached sweep, how to
    resume the stopped, cancelled and failed jobs once nothing runs)."""
    shared, jobs = named(manifest, view.statuses)
    states = ["pending"] * manifest.not_asked() + [job.status.state for job in jobs]
    noun = "trial" if manifest.kind == "search" else "job"
    # the counts before the sweep dir, whose path may be long: a terminal's block cuts lines at its width
    head = [
        f"{len(states)} {noun}{'s' * (len(states) != 1)} ({manifest.launcher}): "
        f"{counts(states)}; sweep dir {manifest.sweep_dir}",
        *shared,
    ]
    tail = results(manifest.sweep_dir)
    if manifest.detach and manifest.finish_job:
        tail.append(f"finish job {manifest.finish_job} (writes the results): {view.finish}")
    # a search's trials not asked yet are unfinished too once no worker is left to ask them
    unfinished = sum(job.status.state in ("stopped", "ended", "cancelled", "failed", "not submitted") for job in jobs)
    unfinished += manifest.not_asked()
    unknown = sum(job.status.state == "unknown" for job in jobs)
    ended = [f"{n} {noun}{'s' * (n != 1)}" for n in [sum(job.status.state == "ended" for job in jobs)] if n]
    if manifest.detach and manifest.finish_job and (view.finish or "").startswith("ended"):
        ended.append("the finish job")
    if view.unaccounted and ended:
        tail.append(
            f"accounting does not answer ({view.unaccounted}): how {' and '.join(ended)} ended once out of SLURM's "
            "queue is unknown (shown ended); squeue and the files tell the rest"
        )
    if view.silent:
        tail.append(
            f"SLURM does not answer ({view.silent}): {unknown} {noun}{'s' * (unknown != 1)} unknown, which SLURM "
            "may still queue or run; resume waits for its answer"
        )
    elif unfinished and not view.alive and not view.workers_alive and not view.launching:
        tail.append(
            f"resume the {unfinished} unfinished {noun}{'s' * (unfinished != 1)} with: "
            f"fmsweep resume {manifest.sweep_dir}"
        )
    return head, jobs, tail


def render(manifest: Manifest, view: View) -> str:
    head, jobs, tail = table(manifest, view)
    return "\n".join([*head, *job_lines(jobs), *tail]) + "\n"


def over(view: View) -> bool:
    """Whether nothing of the sweep runs or waits any more: every job ended (or stopped) and nothing is alive."""
    return (
        not view.alive
        and not view.launching
        and not view.finish_alive
        and not view.workers_alive
        and all(status.state in FINAL for status in view.statuses.values())
    )


def watch(manifest: Manifest, stream: TextIO, interval: float) -> int:
    """Show the sweep until it is over: on a terminal a block redrawn in place, never taller than the terminal;
    elsewhere the table, a line per change of a job's state, and the table again at the end if it changed. The exit
    code: 0 when every job completed (or was pruned), and a search asked all its trials, else 1."""
    screen = Screen(stream) if stream.isatty() else None
    changes, first = None, ""
    while True:
        with contextlib.suppress(UserError):
            manifest = load(manifest.sweep_dir) or manifest  # the launching code records job ids as it submits
        view = look(manifest)
        head, jobs, tail = table(manifest, view)
        if screen is not None:
            screen.draw(fit(head, jobs, tail, *terminal()))
        elif changes is None:
            first = render(manifest, view)
            stream.write(first)
            stream.flush()
            changes = Changes({job.num: job.status.state for job in jobs})
        else:
            changes.write(stream, jobs)
        if over(view):
            if screen is None and render(manifest, view) != first:
                stream.write(render(manifest, view))
            stream.flush()
            ended = all(s.state in ("completed", "pruned") for s in view.statuses.values())
            return 0 if ended and not manifest.not_asked() else 1
        time.sleep(interval)


def main(argv: list[str] | None = None) -> None:
    """`fmsweep status DIR [--watch] [--interval SECONDS]`; a bad DIR or command line is one line, exit code 2."""
    parser = ArgumentParser(
        prog="fmsweep status",
        description="What each job of a sweep is doing: pending, requeued (by SLURM: preempted, ...), running "
        "(its epoch), completed (its best epoch's valid loss and accuracy), pruned, failed (its "
        "error), cancelled, stopped or ended (how, unknown without accounting): these resumable with fmsweep "
        "resume DIR; each named by its own overrides, and the sweep's results once written.",
    )
    parser.add_argument("sweep_dir", type=Path, metavar="DIR", help="the sweep dir (hydra.sweep.dir)")
    parser.add_argument(
        "--watch", action="store_true", help="follow the sweep until it is over; exit 0 if every job completed, else 1"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between looks with --watch (default: %(default)s)",
    )
    try:
        args = parser.parse_args(argv)
        if args.interval <= 0:
            raise UserError(f"fmsweep status: --interval must be > 0, got {args.interval}")
        manifest = require(args.sweep_dir)
    except UserError as exc:
        exit_with(exc)
    if not args.watch:
        sys.stdout.write(render(manifest, look(manifest)))
        return
    try:
        code = watch(manifest, sys.stdout, args.interval)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)


if __name__ == "__main__":
    main()
