"""The sweep's record on disk: `sweep.json` in the sweep dir names every job (its number, overrides, job dir, pack),
the launcher and each job's launcher job id, the command that made the sweep, and, once written, the job that
finishes it. It is written before anything is launched and rewritten (atomically) as jobs are submitted; with the
job dirs it is all that `fmsweep status`, `resume` and `cancel` need, with no process of the sweep alive. A search's
workers add their trials to it as they ask them: every writer of the record rewrites it under `locked`. One command
at a time launches a sweep (its first launch, a rerun, `fmsweep resume`): it holds `launching` from its checks' end
to its own end."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fmsweep.errors import UserError
from fmsweep.files import atomic_write
from fmsweep.sweep import lock

FILE = "sweep.json"
LOCK = ".sweep.json.lock"
LAUNCH_LOCK = ".sweep.launch.lock"
FORMAT = 1
# the launchers' names as hydra/launcher=... chooses them, by the launcher plugin's class name
LAUNCHERS = {"BasicLauncher": "basic", "LocalLauncher": "submitit_local", "SlurmLauncher": "slurm"}


@dataclass
class JobRecord:
    """One job of the sweep: its number, its overrides (as the sweep expanded them), its job dir below the sweep dir,
    its epochs, the pack folder that trains it (None when it trains alone) and the id of the launcher job that runs
    it (a SLURM job id, `<array id>_<index>` in an array; a pid under submitit_local; None under the basic
    launcher or before submission). `cancelled` is set by `fmsweep cancel`. On SLURM, `submission` names the last
    submission that carried it and `task` its index in that array (None for a lone job): what finds it in SLURM
    should the id never have been recorded; `waiting` that it waits for room under the cluster's submit limit, to
    be submitted by the sweep's own jobs (fmsweep.sweep.feed)."""

    num: int
    name: str
    overrides: list[str]
    epochs: int
    pack: str | None = None
    launcher_job: str | None = None
    cancelled: bool = False
    submission: str | None = None
    task: int | None = None
    waiting: bool = False


@dataclass
class Submission:
    """One sbatch of the sweep: its SLURM job name (unique: it carries the sweep's id and a count), what it runs
    (`jobs`, a search's `workers`, or the `results` job), how many array tasks (1: a lone job), and the SLURM id
    it got (an array's id), None until its answer is recorded."""

    name: str
    kind: str
    count: int
    id: str | None = None


@dataclass
class Manifest:
    """A sweep as its sweep dir records it. `kind` is grid or search; `command` the arguments of the command line
    that made it (after the program name), run again from `cwd` by `fmsweep resume`; `finish_job` the SLURM job
    that writes the results of a detached sweep once its jobs ended. A search also records how many trials it
    runs (`trials`: those not asked yet are pending) and the launcher jobs of its `workers`, each of which runs
    trials one after another (a trial's `launcher_job` is the worker that trains it). On SLURM, every submission
    is recorded before its sbatch runs (`submissions`), under a name that carries `sweep_id`; a grid queues no more
    than the cluster's submit limit less `leave_free` (its setting), a limit learned from sbatch's refusal kept as
    `submit_limit`."""

    sweep_dir: Path
    kind: str
    launcher: str
    command: list[str]
    cwd: str
    detach: bool = False
    jobs: list[JobRecord] = field(default_factory=list)
    finish_job: str | None = None
    trials: int | None = None
    workers: list[str] = field(default_factory=list)
    sweep_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    submissions: list[Submission] = field(default_factory=list)
    sbatches: int = 0  # submissions begun, dropped ones included: a name is never given twice
    leave_free: int = 0
    submit_limit: int | None = None

    def pending(self) -> list[Submission]:
        """The submissions whose sbatch may have run but whose answer was never recorded."""
        return [entry for entry in self.submissions if entry.id is None]

    @property
    def path(self) -> Path:
        return self.sweep_dir / FILE

    def save(self) -> None:
        """Write sweep.json atomically: a reader sees the previous record or this one."""
        data = {"format": FORMAT, **{k: v for k, v in asdict(self).items() if k != "sweep_dir"}}
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(data, indent=1) + "\n")

    def job(self, num: int) -> JobRecord | None:
        return next((job for job in self.jobs if job.num == num), None)

    def launcher_jobs(self) -> list[str]:
        """The distinct launcher job ids of the sweep's jobs, in job order, then a search's workers."""
        return list(dict.fromkeys([*(job.launcher_job for job in self.jobs if job.launcher_job), *self.workers]))

    def not_asked(self) -> int:
        """How many trials of a search no worker asked yet (0 for a grid)."""
        return max((self.trials or 0) - len(self.jobs), 0)


@contextlib.contextmanager
def locked(sweep_dir: Path) -> Iterator[None]:
    """Hold the sweep record's lock while the block runs: a search's workers and its launching command read, change
    and rewrite the record one at a time (flock; a POSIX lock on the server over NFS)."""
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(sweep_dir) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        lock.flock(fd, fcntl.LOCK_EX, Path(sweep_dir) / LOCK)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def launching(sweep_dir: Path) -> Iterator[None]:
    """Be the one command that launches the sweep in `sweep_dir` while the block runs (the lock file names it); a
    UserError naming the command that is, before anything is read or written, if another one is. The kernel drops
    the lock with its process, so a killed launch never blocks the next."""
    try:
        fd = lock.take(Path(sweep_dir) / LAUNCH_LOCK)
    except lock.Held as exc:
        raise UserError(
            f"{sweep_dir} is being launched by {exc}; nothing was launched (wait for that command to end, or stop "
            f"it; fmsweep status {sweep_dir} shows the sweep)"
        ) from None
    try:
        yield
    finally:
        os.close(fd)


def load(sweep_dir: Path) -> Manifest | None:
    """The sweep recorded in `sweep_dir`, None when it holds no sweep.json; UserError when it cannot be read."""
    path = Path(sweep_dir) / FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not an fmsweep sweep record (format {FORMAT})")
    try:
        jobs = [JobRecord(**job) for job in data["jobs"]]
        return Manifest(
            sweep_dir=Path(sweep_dir),
            kind=data["kind"],
            launcher=data["launcher"],
            command=list(data["command"]),
            cwd=data["cwd"],
            detach=bool(data["detach"]),
            jobs=jobs,
            finish_job=data.get("finish_job"),
            trials=data.get("trials"),
            workers=list(data.get("workers", [])),
            **({"sweep_id": data["sweep_id"]} if "sweep_id" in data else {}),
            submissions=[Submission(**entry) for entry in data.get("submissions", [])],
            sbatches=int(data.get("sbatches", len(data.get("submissions", [])))),
            leave_free=int(data.get("leave_free", 0)),
            submit_limit=data.get("submit_limit"),
        )
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path} is not an fmsweep sweep record: {exc}") from None


def require(sweep_dir: Path) -> Manifest:
    """The sweep recorded in `sweep_dir`; UserError when there is none."""
    if not Path(sweep_dir).is_dir():
        raise UserError(f"{sweep_dir} is not a directory (expected an fmsweep sweep dir)")
    manifest = load(sweep_dir)
    if manifest is None:
        raise UserError(
            f"{sweep_dir} holds no {FILE}: not an fmsweep sweep dir (or one made before sweeps were recorded)"
        )
    return manifest


def differences(recorded: JobRecord, overrides: list[str]) -> str:
    """How `overrides` differ from the job's recorded ones, e.g. `optimizer.lr=0.1 instead of optimizer.lr=0.01`;
    "" when they are the same (in any order)."""
    if sorted(recorded.overrides) == sorted(overrides):
        return ""
    new = [o for o in overrides if o not in recorded.overrides]
    old = [o for o in recorded.overrides if o not in overrides]
    if new and old:
        return f"{' '.join(new)} instead of {' '.join(old)}"
    return f"{' '.join(new)} added" if new else f"without {' '.join(old)}"


def ids_text(ids: list[str]) -> str:
    """`123_[0-3]` style summary of SLURM ids: arrays by their id and task count, lone jobs as they are."""
    arrays: dict[str, int] = {}
    for job_id in ids:
        arrays[job_id.partition("_")[0]] = arrays.get(job_id.partition("_")[0], 0) + ("_" in job_id)
    return ", ".join(f"{a} (array of {n})" if n else a for a, n in arrays.items())
