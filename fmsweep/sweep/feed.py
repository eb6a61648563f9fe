"""A grid larger than the cluster lets one user queue runs to its end with nobody coming back: a launch submits what
the cluster's submit limit leaves room for and records the rest as waiting (`JobRecord.waiting`), each waiting
launcher job kept (pickled) in the sweep dir by `park`; the sweep's own jobs submit more as they end, and the job
that writes the results submits what still waits before it writes them (`launch.top_up`, `launch.finish`). Nothing
of the sweep stays alive on the login node.

The limit is read from the cluster (the jobs' QOS's MaxSubmitJobsPerUser and the user's association's
MaxSubmitJobs, against the user's jobs that count for each), or learned from an sbatch refused for it (the number
of the user's jobs queued then, recorded as `Manifest.submit_limit`); the sweep's `leave_free` jobs of it are left
to the user's other work."""

from __future__ import annotations

import contextlib
import getpass
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmsweep.errors import UserError
from fmsweep.files import atomic_write
from fmsweep.sweep.manifest import Manifest
from fmsweep.sweep.slurm import slurm_output

WAITING = ".waiting"  # in the sweep dir: <first job number>.pkl for each waiting launcher job, and the launcher's
LAUNCHER = "launcher.pkl"
# the SLURM words for a refusal because the user queues as many jobs as the cluster lets them
SUBMIT_LIMIT = re.compile(r"\b(\w*MaxSubmitJob\w*|\w*GrpSubmitJob\w*)|job submit limit", re.IGNORECASE)


class NoRoom(UserError):
    """sbatch refused a submission because the user queues as many jobs as the cluster's submit limit lets them."""


@dataclass(frozen=True)
class Limit:
    """How many jobs of the user the cluster queues at once (`jobs`), as `source` says, and how many of them count
    against it now (`queued`)."""

    jobs: int
    source: str
    queued: int

    def room(self, leave_free: int) -> int:
        return max(self.jobs - self.queued - leave_free, 0)

    def text(self) -> str:
        return f"{self.jobs} jobs: {self.source}; {self.queued} of yours queued"


def _rows(args: list[str]) -> list[list[str]]:
    out = slurm_output(args)
    return [line.split("|") for line in (out or "").splitlines() if line.strip()]


def _qos_and_account(params: Mapping[str, Any], user: str) -> tuple[str, str, list[list[str]]]:
    """The QOS and account the sweep's jobs run under (the launcher's, else the user's defaults) and the user's
    association rows for that account (Account, DefaultQOS, MaxSubmit)."""
    account = (
        params.get("account")
        or next(iter(_rows(["sacctmgr", "-n", "-P", "show", "user", user, "format=DefaultAccount"])), [""])[0]
    )
    rows = _rows(["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=Account,DefaultQOS,MaxSubmit"])
    assoc = [row for row in rows if row[0] == account]
    qos = params.get("qos") or next((row[1] for row in assoc if row[1]), "") or "normal"
    return qos, account, assoc


def limit(params: Mapping[str, Any], learned: int | None) -> Limit | None:
    """The tightest submit limit the sweep's jobs (submitted with the launcher's `params`) are under, and how many
    of the user's jobs count against it now; None where the cluster states none (or SLURM is absent). Silent
    where squeue or sacctmgr does not answer."""
    user = getpass.getuser()
    qos, account, assoc = _qos_and_account(params, user)
    found = [(int(row[2]), f"account {account}'s MaxSubmitJobs", 1, account) for row in assoc if row[2].isdigit()]
    for row in _rows(["sacctmgr", "-n", "-P", "show", "qos", qos, "format=Name,MaxSubmitPU"]):
        if row[0] == qos and row[1].isdigit():
            found.append((int(row[1]), f"QOS {qos}'s MaxSubmitJobsPerUser", 0, qos))
    if learned is not None:
        found.append((learned, f"learned from sbatch's refusal (QOS {qos})", 0, qos))
    if not found:
        return None
    queue = _rows(["squeue", "-h", "-r", "-u", user, "-o", "%q|%a"])  # each array task counts
    limits = [Limit(jobs, source, sum(row[key] == value for row in queue)) for jobs, source, key, value in found]
    return min(limits, key=lambda each: each.jobs - each.queued)


def queued(params: Mapping[str, Any]) -> int:
    """How many of the user's jobs are queued in the QOS of the sweep's jobs: the limit an sbatch refusal teaches."""
    user = getpass.getuser()
    qos = _qos_and_account(params, user)[0]
    return sum(row[0] == qos for row in _rows(["squeue", "-h", "-r", "-u", user, "-o", "%q"]))


def refused_for_limit(said: str) -> str | None:
    """The cause named in an sbatch refusal when it is the user's submit limit (e.g.
    `QOSMaxSubmitJobPerUserLimit`); None for any other refusal."""
    match = SUBMIT_LIMIT.search(said)
    return (match.group(1) or "job submit limit") if match else None


def park(sweep_dir: Path, launcher: Any, waiting: list[tuple[list[int], Any]]) -> None:
    """Keep what a job of the sweep needs to submit the `waiting` launcher jobs (numbers and unit) later: the
    launcher and each unit, pickled in the sweep dir; those kept already are kept as they are (`forget` drops them
    before a launch makes them anew)."""
    import cloudpickle

    folder = sweep_dir / WAITING
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / LAUNCHER).exists():
        atomic_write(folder / LAUNCHER, cloudpickle.dumps(launcher))
    for nums, unit in waiting:
        if not (folder / f"{nums[0]}.pkl").exists():
            atomic_write(folder / f"{nums[0]}.pkl", cloudpickle.dumps((nums, unit)))


def forget(sweep_dir: Path, nums: list[int], launcher: bool = False) -> None:
    """Drop the kept launcher jobs of the jobs `nums` (submitted, or made anew by a launch, which drops the kept
    launcher too)."""
    for name in [*([LAUNCHER] if launcher else []), *(f"{num}.pkl" for num in nums)]:
        (sweep_dir / WAITING / name).unlink(missing_ok=True)


def parked(sweep_dir: Path, record: Manifest) -> tuple[Any, list[tuple[list[int], Any]]]:
    """The launcher and the launcher jobs of the record's waiting jobs (not cancelled, not submitted), in order."""
    import pickle

    folder = sweep_dir / WAITING
    firsts = sorted({min(_members(record, job.num)) for job in record.jobs if _waits(job)})
    units = [pickle.loads((folder / f"{num}.pkl").read_bytes()) for num in firsts]
    return pickle.loads((folder / LAUNCHER).read_bytes()), units


def _members(record: Manifest, num: int) -> list[int]:
    job = record.job(num)
    assert job is not None
    return [other.num for other in record.jobs if job.pack and other.pack == job.pack] or [num]


def _waits(job: Any) -> bool:
    return bool(job.waiting) and not job.cancelled and not job.launcher_job


def waiting(record: Manifest) -> int:
    """How many of the record's jobs wait for room to be submitted."""
    return sum(_waits(job) for job in record.jobs)


@contextlib.contextmanager
def outside_job() -> Iterator[None]:
    """While inside, this process's environment has none of its own SLURM job's variables: a job submitted from a
    job must not inherit them (its own allocation's memory, CPUs, GPUs)."""
    saved = {key: value for key, value in os.environ.items() if key.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)
