"""Every SLURM job of a sweep can be found without its id: each sbatch is recorded in sweep.json before it runs,
under a job name that carries the sweep's id, and its id once it answered. A launcher killed between the two, an
sbatch that failed after SLURM took the job, one that hung past SBATCH_TIMEOUT_S or printed nothing readable: each
leaves a submission with no id, which `settle` resolves by asking SLURM for that name: the jobs it holds are
adopted, and a name it never heard of was not submitted. Nothing is submitted again before that is settled, and
where SLURM does not answer nothing is decided (Silent)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fmsweep import gate
from fmsweep.errors import UserError
from fmsweep.sweep.manifest import Manifest, Submission, load, locked
from fmsweep.sweep.slurm import Silent, slurm_output

SBATCH_TIMEOUT_S = 120  # an sbatch that has not answered by then is stopped, and what it did is asked of SLURM
SBATCH_KILL_S = 10  # how long a stopped sbatch gets to end before it is killed
SEARCH_BACK = "now-30days"  # how far back accounting is searched for a name


class Refused(UserError):
    """sbatch refused a submission, and SLURM holds nothing under its name: nothing of it was submitted. `said` is
    sbatch's error."""

    def __init__(self, message: str, said: str) -> None:
        super().__init__(message)
        self.said = said


def begin(record: Manifest, kind: str, count: int, base: str) -> Submission:
    """Record a submission of `count` array tasks (`kind`: jobs, workers or results) under a new name `<base>:<sweep
    id>.<n>`, before its sbatch runs; the caller saves the record."""
    entry = Submission(f"{base}:{record.sweep_id}.{record.sbatches}", kind, count)
    record.submissions.append(entry)
    record.sbatches += 1
    return entry


def find(names: list[str]) -> dict[str, str]:
    """The SLURM id (an array's id) of each name SLURM holds, queued, just ended, or ended in its accounting;
    Silent when squeue or sacct does not answer."""
    if not names:
        return {}
    found: dict[str, str] = {}
    # every state squeue still knows (an ended job for MinJobAge): accounting records a job seconds after its end
    out = slurm_output(["squeue", "-h", "-r", "-t", "all", "--name", ",".join(names), "-o", "%i|%j"]) or ""
    for line in out.splitlines():
        job_id, _, name = line.partition("|")
        found[name] = job_id.partition("_")[0]
    rest = [name for name in names if name not in found]
    if rest:
        args = ["-n", "-P", "-X", "--name", ",".join(rest), "-S", SEARCH_BACK, "-o", "JobID,JobName"]
        for line in (slurm_output(["sacct", *args]) or "").splitlines():
            job_id, _, name = line.partition("|")
            if name in rest:
                found[name] = job_id.partition("_")[0].partition(".")[0]
    return found


def adopt(record: Manifest, entry: Submission, slurm_id: str) -> None:
    """Record `slurm_id` as what `entry` submitted: its jobs' (or workers', or results job's) ids follow from it."""
    entry.id = slurm_id
    if entry.kind == "jobs":
        for job in record.jobs:
            if job.submission == entry.name:
                job.launcher_job = slurm_id if job.task is None else f"{slurm_id}_{job.task}"
    elif entry.kind == "workers":
        record.workers += [slurm_id] if entry.count == 1 else [f"{slurm_id}_{i}" for i in range(entry.count)]
    else:
        record.finish_job = slurm_id


def drop(record: Manifest, entry: Submission) -> None:
    """Forget `entry`, which SLURM never took: its jobs are not submitted."""
    record.submissions.remove(entry)
    for job in record.jobs:
        if job.submission == entry.name:
            job.submission = job.task = None


def settle(record: Manifest) -> list[str]:
    """Resolve the record's submissions that have no id (see the module): adopt what SLURM holds under each name,
    drop the others; a line for each adopted one. Silent when SLURM does not answer: nothing is changed. The caller
    holds the record's lock (no sbatch of the sweep runs meanwhile) and saves the record."""
    pending = record.pending()
    found = find([entry.name for entry in pending])
    lines = []
    for entry in pending:
        if entry.name in found:
            adopt(record, entry, found[entry.name])
            lines.append(
                f"fmsweep: SLURM holds submission {entry.name} ({entry.kind}, {entry.count} task(s)) as job "
                f"{found[entry.name]}, which the record had not: adopted, not submitted again"
            )
        else:
            drop(record, entry)
    return lines


def settle_record(sweep_dir: Path, undone: str = "nothing was launched") -> Manifest | None:
    """Settle the submissions of the sweep in `sweep_dir` that have no id (`settle`), under the record's lock, and
    say what was adopted; the record (None without one). A UserError when SLURM does not answer: before anything
    is submitted again (or cancelled), what those submitted must be known; `undone` says what was not done."""
    with locked(sweep_dir):
        record = load(sweep_dir)
        if record is None or not record.pending():
            return record
        try:
            lines = settle(record)
        except Silent as exc:
            raise UserError(
                f"SLURM does not answer ({exc}): {len(record.pending())} submission(s) of {sweep_dir} have no "
                f"recorded answer, and what they submitted cannot be looked up; {undone} (try again once SLURM answers)"
            ) from None
        record.save()
    for line in lines:
        print(line)
    return record


@contextlib.contextmanager
def settled_sbatch() -> Iterator[list[str]]:
    """While inside, submitit's sbatch calls give up after SBATCH_TIMEOUT_S, and one that fails is settled by its
    job name: where SLURM holds a job of that name, submitit goes on with it as if sbatch had answered (so the job
    finds its pickle), and sbatch's error is added to the list yielded. Silent where SLURM does not answer."""
    from submitit.slurm.slurm import SlurmExecutor

    made, submit = SlurmExecutor._make_submission_command, SlurmExecutor._submit_command
    said: list[str] = []

    def timed(self: Any, path: Any) -> list[str]:
        return ["timeout", "-k", str(SBATCH_KILL_S), str(SBATCH_TIMEOUT_S), *made(self, path)]

    def settled(self: Any, command: str) -> Any:
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's error, which is raised too
                return submit(self, command)
        except Exception as exc:
            name = self.parameters["job_name"]
            found = find([name]).get(name)
            if found is None:
                raise
            code = getattr(exc.__cause__, "returncode", None)  # timeout's 124; killed with its process group, -9
            stopped = f"no answer in {SBATCH_TIMEOUT_S} s" if code in (124, 137, -9) else f"exit code {code}"
            said.append(" ".join(str(exc).split()) or stopped)
            return self.job_class(folder=self.folder, job_id=found, tasks=list(range(self._num_tasks())))

    SlurmExecutor._make_submission_command = timed  # type: ignore[method-assign,assignment]
    SlurmExecutor._submit_command = settled  # type: ignore[method-assign]
    try:
        yield said
    finally:
        SlurmExecutor._make_submission_command = made  # type: ignore[method-assign]
        SlurmExecutor._submit_command = submit  # type: ignore[method-assign]


def sbatch(record: Manifest, entry: Submission, ex: Any, submit: Callable[[], list[Any]]) -> list[Any]:
    """Submit `entry` (begun, with what it carries marked in `record`): save the record, name the jobs of the
    submitit executor `ex` after it, run `submit` (its submission through `ex`), record the SLURM id and save the
    record again, whatever came of it; submitit's jobs. Refused when sbatch failed and SLURM holds nothing under
    the name (the entry is dropped); a UserError when sbatch failed and SLURM does not answer (the entry stays, to
    settle). The caller holds the record's lock."""
    record.save()
    ex.update_parameters(name=entry.name)
    try:
        gate.crash_at("before-sbatch")
        try:
            with settled_sbatch() as said:
                jobs = submit()
        except Silent as exc:
            raise UserError(
                f"sbatch failed and SLURM does not answer ({exc}): whether {entry.name} was submitted is unknown; "
                "the record keeps it to settle: fmsweep resume settles it once SLURM answers"
            ) from None
        except Exception as exc:  # noqa: BLE001 (sbatch's failure, of any kind, with nothing of it in SLURM)
            drop(record, entry)
            error = " ".join(str(exc).split())
            raise Refused(f"sbatch refused {entry.name}: {error[-300:]}", str(exc)) from None
        gate.crash_at("after-sbatch")
        slurm_id = str(jobs[0].job_id).partition("_")[0]
        adopt(record, entry, slurm_id)
        for error in said:
            print(f"fmsweep: sbatch failed ({error[-120:]}), but SLURM holds {entry.name} as job {slurm_id}: recorded")
        return list(jobs)
    finally:
        record.save()
