"""The live status of a running sweep, shown by the launching command while its jobs run: each job pending,
running (its epoch and best valid accuracy), completed (its test accuracy), pruned by a search (its epoch) or failed
(its error), and the counts.

On a terminal the block of lines is redrawn in place, never taller than the terminal: the counts, then the jobs
that need watching first (running, failed), and where they do not all fit, a line counting those left out.
Elsewhere (a file, a pipe, a SLURM log) a line is written per change of a job's state, never one per epoch, so that
a log of a long sweep stays readable."""
from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from fmsweep.runs import HYDRA_DIR
from fmsweep.tracking import read_metrics

log = logging.getLogger(__name__)

STATES = ("pending", "running", "completed", "pruned", "failed")
SHOWN_FIRST = ("running", "failed", "pending", "completed", "pruned")  # the order of the jobs' lines on a terminal
ERROR_CHARS = 80
SQUEUE_TIMEOUT_S = 10
# submitit's folder of a SLURM job below sweep_dir/.submitit: `<job id>` for a lone job, `<array id>_<task index>`
# for a task of a job array; the job id as squeue's %i writes it
SUBMITIT_FOLDER = re.compile(r"(\d+)(?:_(\d+))?")


@dataclass(frozen=True)
class Job:
    """A job of the sweep: its dir name below the sweep dir (absent until the job starts), its epochs, and the
    index of the launcher job that runs it (when packing puts several jobs in one; else its own index)."""

    name: str
    epochs: int
    task: int | None = None


@dataclass(frozen=True)
class Status:
    """What is known of a job: its state (one of STATES) and a detail: SLURM's reason for a pending job, the
    progress of a running one, the test accuracy of a completed one, the error of a failed one."""

    state: str
    detail: str = ""

    def text(self, progress: bool = True) -> str:
        """`pending (Priority)`, `running: epoch 2 of 10, ...`; without `progress`, a running job is `running`."""
        if not self.detail or (self.state == "running" and not progress):
            return self.state
        return f"pending ({self.detail})" if self.state == "pending" else f"{self.state}: {self.detail}"


def squeue(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """SLURM's state and reason of each job it still lists, by job id; {} when squeue fails (the job dirs tell the
    rest). `-r` gives each array task its own line: without it, pending tasks share one (`12_[0-5%64]`)."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(job_ids)], capture_output=True,
                             text=True, timeout=SQUEUE_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = (line.split("|") for line in out.splitlines())
    return {f[0]: (f[1], f[2]) for f in fields if len(f) == 3}


def counts(states: Iterable[str]) -> str:
    """`3 pending, 2 running, 1 completed, 0 failed`; pruned (by a search) only when there are any."""
    n = Counter(states)
    return ", ".join(f"{n[state]} {state}" for state in STATES if state != "pruned" or n[state])


def left_out(states: list[str]) -> str:
    """`… 14 more (2 running, 12 pending)`: the jobs a block too tall for the terminal leaves out, by state."""
    n = Counter(states)
    return f"… {len(states)} more ({', '.join(f'{n[state]} {state}' for state in SHOWN_FIRST if n[state])})"


def _mtime(path: Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


def _progress(run_dir: Path, epochs: int) -> str:
    """`epoch k of N, best valid acc 87.12 %` from history.csv; `starting` before the first epoch ends."""
    try:
        with open(run_dir / "history.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return "starting"
    if not rows:
        return "starting"
    best = max(float(row["valid_acc"]) for row in rows)
    return f"epoch {int(float(rows[-1]['epoch']))} of {epochs}, best valid acc {100 * best:.2f} %"


class LiveStatus:
    """Context manager: while inside, a daemon thread polls the job dirs every `interval` seconds and shows the
    sweep's status on `stream`; with `slurm`, SLURM's view of the jobs too (one squeue call per poll).

    A sweep dir can be launched again (finished jobs are skipped, the others resume), so what its job dirs held
    when the status was created belongs to the earlier launch: a job runs once Hydra rewrote its .hydra/, and an
    earlier metrics.json counts only when it is a completed run of all the job's epochs, which the job leaves as
    it is."""

    def __init__(self, sweep_dir: Path, jobs: list[Job], stream: TextIO = sys.stdout, interval: float = 2.0,
                 slurm: bool = False, others: Iterable[str] = ()) -> None:
        self.sweep_dir, self.jobs, self.stream, self.interval, self.slurm = sweep_dir, jobs, stream, interval, slurm
        self.others = list(others)  # the states of the sweep's jobs outside this launch (a search's other trials)
        self._before = {job.name: (_mtime(self._config(job)), _mtime(self._metrics(job))) for job in jobs}
        self._status = {job.name: Status("pending") for job in jobs}
        self._logged = {job.name: "pending" for job in jobs}  # the state each job was last reported in, off a terminal
        self._drawn: list[str] = []  # the block on the terminal
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fmsweep-live-status", daemon=True)

    def __enter__(self) -> LiveStatus:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the thread, poll once more and show the final state."""
        self._stop.set()
        self._thread.join()
        self._safe_update()

    def update(self) -> None:
        """Read every job once and show the result: what the thread does every `interval` seconds."""
        view = self._slurm_view() if self.slurm else {}
        for job in self.jobs:
            try:
                self._status[job.name] = self._read(job, view.get(job.name))
            except Exception:  # a job dir half-written or unreadable: its last status stands until the next poll
                log.debug("live status: cannot read %s", job.name, exc_info=True)
        if self.stream.isatty():
            self._redraw()
        else:
            self._log_changes()

    def _run(self) -> None:
        # the first poll after one interval: the launcher's own opening lines come before the first block
        while not self._stop.wait(self.interval):
            self._safe_update()

    def _safe_update(self) -> None:
        try:
            self.update()
        except Exception:  # showing the status must never stop the sweep (a closed stream, a vanished folder)
            log.debug("live status: update failed", exc_info=True)

    def _config(self, job: Job) -> Path:
        return self.sweep_dir / job.name / HYDRA_DIR / "config.yaml"

    def _metrics(self, job: Job) -> Path:
        return self.sweep_dir / job.name / "metrics.json"

    def _read(self, job: Job, slurm: tuple[str, str] | None) -> Status:
        """The job's status from its dir and SLURM's (state, reason), None where SLURM does not list it."""
        config_before, metrics_before = self._before[job.name]
        metrics_changed = _mtime(self._metrics(job)) != metrics_before  # before reading it: a newer file is read again
        metrics = read_metrics(self.sweep_dir / job.name) or {}
        ended = metrics.get("epochs_run", 0) >= job.epochs or metrics.get("stopped_early") or metrics.get("pruned")
        if metrics.get("status") == "completed" and (metrics_changed or ended):
            return Status("completed", f"test acc {100 * metrics['test_acc']:.2f} %")
        if metrics.get("status") == "pruned" and (metrics_changed or ended):
            return Status("pruned", f"at epoch {metrics['pruned']}")
        if metrics.get("status") == "failed" and metrics_changed:
            return Status("failed", " ".join(str(metrics.get("error", "")).split())[:ERROR_CHARS])
        state, reason = slurm or ("", "")
        if state == "PENDING":  # not started yet, or requeued
            return Status("pending", reason)
        # A job SLURM no longer lists and without a result is running as long as it started: it may be between
        # requeues. Kept simple: one killed before writing metrics.json stays running, in the final state too (the
        # closing summary of the sweep lists it as unfinished).
        if _mtime(self._config(job)) not in (None, config_before) or state == "RUNNING":
            return Status("running", _progress(self.sweep_dir / job.name, job.epochs))
        return Status("pending", state)

    def _slurm_view(self) -> dict[str, tuple[str, str]]:
        """SLURM's (state, reason) by job name, from one squeue call; task index i of an array runs the jobs whose
        `task` is i."""
        folders = self.sweep_dir / ".submitit"
        ids: dict[str, str] = {}
        matches = [m for m in map(SUBMITIT_FOLDER.fullmatch, os.listdir(folders) if folders.is_dir() else []) if m]
        for match in sorted(matches, key=lambda m: int(m[1])):  # the newest launch of the sweep dir last: it wins
            task = int(match[2] or 0)
            for index, job in enumerate(self.jobs):
                if (index if job.task is None else job.task) == task:
                    ids[job.name] = match[0]
        view = squeue(sorted(set(ids.values()))) if ids else {}
        return {name: view[job_id] for name, job_id in ids.items() if job_id in view}

    def _redraw(self) -> None:
        """Draw the block over the previous one, if it changed. The terminal's size is read each time, so that a
        resize is followed, and the block keeps a row below it free (the cursor's, after its last line): it never
        scrolls, which would push a copy of it into the scrollback at every redraw. The counts come first, then
        the jobs by SHOWN_FIRST, and where they do not all fit, a last line counts those left out."""
        size = shutil.get_terminal_size()
        width, height = size.columns - 1, max(size.lines - 1, 1)  # a line as wide as the terminal would wrap
        name_width = max((len(job.name) for job in self.jobs), default=0)
        jobs = sorted(self.jobs, key=lambda job: SHOWN_FIRST.index(self._status[job.name].state))
        lines = [f"{job.name.ljust(name_width)}  {self._status[job.name].text()}" for job in jobs]
        if len(lines) >= height:  # with the counts they would not fit: room for `height - 2` and the `more` line
            shown = max(height - 2, 0)
            lines = [*lines[:shown], left_out([self._status[job.name].state for job in jobs[shown:]])]
        total = counts([*self.others, *(s.state for s in self._status.values())])
        lines = [line[:width] for line in [total, *lines][:height]]
        if lines == self._drawn:
            return
        up = f"\x1b[{len(self._drawn)}F" if self._drawn else ""
        clear = "\x1b[J" if len(lines) < len(self._drawn) else ""  # the rows a taller block left below this one
        self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines) + clear)
        self.stream.flush()
        self._drawn = lines

    def _log_changes(self) -> None:
        """One line per job whose state changed since it was last reported, with the counts after that change."""
        changed = False
        for job in self.jobs:
            status = self._status[job.name]
            if status.state != self._logged[job.name]:
                logged = {**self._logged, job.name: status.state}
                total = counts([*self.others, *logged.values()])
                self.stream.write(f"fmsweep: {job.name} {status.text(progress=False)} ({total})\n")
                self._logged, changed = logged, True  # after the write: a failed one is retried at the next poll
        if changed:
            self.stream.flush()
