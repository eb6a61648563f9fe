"""`fmsweep cancel DIR`: stop the sweep's jobs that are still queued or running, and record them cancelled.

On SLURM, `scancel` each launcher job of the sweep (and the job that would write its results) that squeue still
lists; under submitit_local, SIGTERM each job process still alive. A job that trains saves its last.pt and stops;
every job that did not complete is recorded cancelled in sweep.json, and `fmsweep resume DIR` launches them again."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Collection
from pathlib import Path

from fmsweep.errors import ArgumentParser, UserError, exit_with
from fmsweep.sweep import manifest, submission
from fmsweep.sweep.manifest import Manifest

WAIT_S = 60  # how long to wait for the cancelled jobs to end (SLURM's KillWait is 30 s)
COMMAND_TIMEOUT_S = 60


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="fmsweep cancel", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="the sweep dir (it holds sweep.json)")
    return parser.parse_args(argv)


def slurm(*args: str) -> str:
    """Run a SLURM command and return its stdout; UserError when it is missing or fails."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        raise UserError(f"{args[0]} not found: cancel a SLURM sweep where SLURM's commands are installed") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{shlex.join(args)} did not answer within {COMMAND_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise UserError(f"{shlex.join(args)} failed (exit code {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def queued() -> set[str]:
    """The ids of the jobs squeue lists, each array task on its own (`123_4`)."""
    return set(slurm("squeue", "-h", "-r", "-o", "%i").split())


def listed(job_id: str, ids: Collection[str]) -> bool:
    """Whether squeue's `ids` hold the job, or a task of it when it is a whole array."""
    return job_id in ids or any(i.startswith(f"{job_id}_") for i in ids)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie that its parent did not reap yet does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_local_job(pid: int) -> bool:
    """Whether process `pid` is a submitit_local job, not another process that got the pid of one that ended."""
    try:
        return b"submitit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc to tell: trust the pid
    except OSError:
        return False


def record(sweep_dir: Path) -> tuple[int, int]:
    """Mark every job of the sweep that did not complete (or get pruned) cancelled in sweep.json; the numbers of
    jobs cancelled and completed. Read and written under the record's lock: a launcher that still submits records
    its ids on the same record, and submits nothing more once it finds these marks."""
    from fmsweep.results.runs import read_metrics

    with manifest.locked(sweep_dir):
        sweep = manifest.require(sweep_dir)
        for job in sweep.jobs:
            job.cancelled = read_metrics(sweep_dir / job.name).get("status") not in ("completed", "pruned")
        sweep.save()
    cancelled = sum(job.cancelled for job in sweep.jobs)
    return cancelled, len(sweep.jobs) - cancelled


def count(n: int, noun: str) -> str:
    """`1 job`, `3 jobs`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def wait(live: Callable[[], list[str]]) -> list[str]:
    """Poll `live` every second, up to WAIT_S, until it lists nothing; what it lists at the end."""
    deadline = time.monotonic() + WAIT_S
    remaining = live()
    while remaining and time.monotonic() < deadline:
        time.sleep(1)
        remaining = live()
    return remaining


def cancel(sweep: Manifest, shown: str) -> str:
    """Cancel the sweep's live jobs and record them; the line that says what was done (`shown`: the sweep dir as
    the user named it)."""
    if sweep.launcher == "slurm":
        ids = sweep.launcher_jobs()
        queue = queued()
        targets = [i for i in ids if listed(i, queue)]
        finish = sweep.finish_job if sweep.finish_job and listed(sweep.finish_job, queue) else None
        if not targets and not finish:
            return f"fmsweep: nothing to cancel: no SLURM job of {shown} is queued or running"
        slurm("scancel", *targets, *([finish] if finish else []))
        what = f"{count(len(targets), 'SLURM job')} of {shown}"
        what += f" ({manifest.ids_text(targets)})" if targets else ""
        if finish:
            what += f" and its finish job {finish}"

        def live() -> list[str]:
            queue = queued()
            return [i for i in [*targets, *([finish] if finish else [])] if listed(i, queue)]
    elif sweep.launcher == "submitit_local":
        pids = [int(job) for job in sweep.launcher_jobs() if job.isdigit()]
        alive = [pid for pid in pids if pid_alive(pid) and is_local_job(pid)]
        if not alive:
            return f"fmsweep: nothing to cancel: no job process of {shown} is alive"
        for pid in alive:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass  # it ended meanwhile
            except PermissionError:
                raise UserError(f"no permission to stop process {pid} of {shown}") from None
        what = f"{count(len(alive), 'local job')} of {shown} (pids {' '.join(map(str, alive))})"

        def live() -> list[str]:
            return [str(pid) for pid in alive if pid_alive(pid)]
    else:
        return (
            f"fmsweep: nothing to cancel: {shown} ran under the {sweep.launcher} launcher, whose jobs run "
            f"inside the process that made the sweep (stop that one)"
        )
    record(sweep.sweep_dir)
    remaining = wait(live)
    cancelled, completed = record(sweep.sweep_dir)  # again: a job may have completed while it was cancelled
    ending = f"; still ending after {WAIT_S} s: {' '.join(remaining)}" if remaining else ""
    return (
        f"fmsweep: cancelled {what}; {count(cancelled, 'job')} recorded cancelled, {completed} completed "
        f"before{ending}; resume with: fmsweep resume {shlex.quote(shown)}"
    )


def main(argv: list[str] | None = None) -> None:
    """Command line entry point; a user error (no sweep.json, scancel failing) is one line and exit code 2."""
    try:
        args = parse_args(argv)
        manifest.require(args.sweep_dir)
        sweep = submission.settle_record(args.sweep_dir, "nothing was cancelled")  # unrecorded jobs too
        assert sweep is not None
        print(cancel(sweep, str(args.sweep_dir)))
    except UserError as exc:
        exit_with(exc)


if __name__ == "__main__":
    main()
