"""Launching the checked jobs of a sweep: each job, or pack of jobs, with the config composed for it in the
launching process (no launcher composes it again), through the sweep's launcher: here, one after another (basic),
or as submitit jobs (submitit_local; SLURM, in arrays of at most MaxArraySize, named after the sweep), each one's
id written into the sweep's record as soon as it is known. Attached, the live status runs until every job of the
sweep ended; detached (SLURM), the command returns once the jobs and the job that writes the results are
submitted. On SLURM, no more than the cluster's submit limit has room for: the rest waits (fmsweep.sweep.feed),
and is submitted as room frees up by the sweep's jobs as they end (`top_up`), by its results job before it writes
them (`finish`), or by the attached command itself (`fed`)."""

from __future__ import annotations

import copy
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO, cast

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict

from fmsweep import signals
from fmsweep.errors import UserError
from fmsweep.sweep import feed, packing, prelaunch, submission
from fmsweep.sweep.manifest import Manifest, ids_text, launching, load, locked
from fmsweep.sweep.slurm import Silent

# how long a Ctrl-C'd sweep of submitit_local waits for its jobs, which got the Ctrl-C too, to save and stop:
# submitit's controller of a job gives it 1 s after SIGINT, then kills it
LOCAL_STOP_S = 10
# how often an attached sweep looks whether the jobs an earlier launch left running have ended
ALIVE_POLL_S = 5.0
# how often an attached sweep looks whether a submitit job it waits for has ended
JOB_POLL_S = 0.2
DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's default MaxArraySize
# how long a replaced results job gets to leave the queue (SLURM's KillWait is 30 s): never two at once
CANCEL_WAIT_S = 60
FINISH_RETRY_S = 60  # how often the results job looks for room when nothing of the sweep is left to make it
FINISH_PATIENCE_S = 20 * 60  # how long it looks (its time limit is 30 min)


class Unit:
    """What one launcher job runs: Hydra's job (run dir, .hydra/, logging, callbacks, the task function) with a
    config composed in the launching process: a job's own, or its pack's (whose folder's pack.yaml names the
    members). Submitit calls `checkpoint` when the job is about to be requeued: it runs again as it is. A SLURM job,
    as it ends, submits what of the sweep waits for room under the cluster's submit limit (fmsweep.sweep.feed)."""

    def __init__(
        self, hydra_context: Any, task_function: Any, config: DictConfig, singleton_state: dict[Any, Any]
    ) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config
        self.singleton_state = singleton_state

    def __call__(self, job_id: str | None = None) -> JobReturn:
        """Run the job; `job_id` is the launcher's id of it (submitit's, read in the job when None)."""
        if job_id is None:
            signals.listen()  # first: submitit's SIGTERM handler would swallow a cancel until the run's StopRequest
            import submitit

            Singleton.set_state(self.singleton_state)
            setup_globals()
            job_id = submitit.JobEnvironment().job_id
        config = copy.deepcopy(self.config)
        with open_dict(config):
            config.hydra.job.id = job_id
        result = run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        if "SLURM_JOB_ID" in os.environ:
            feed_after_job(Path(str(self.config.hydra.sweep.dir)))
        return result

    def checkpoint(self, *args: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args)


def units(launcher: Any, manifest: Manifest, configs: dict[int, DictConfig]) -> list[tuple[list[int], Unit]]:
    """The launcher jobs for the jobs `configs` holds (by number): packs as `pack` says (a pack's folder and
    pack.yaml are written here, and its members' records name it), each job alone otherwise."""
    nums = sorted(configs)
    packs = packing.plan([configs[n] for n in nums])
    sweep_dir = manifest.sweep_dir
    feed.forget(sweep_dir, nums, launcher=True)
    state = Singleton.get_state()  # Hydra's singletons, for the jobs run in other processes: once, not per job
    out = []
    for members in packs:
        member_nums = [nums[i] for i in members]
        config = configs[member_nums[0]]  # a lone job's own: what is set below is what it resolves to
        name = str(config.hydra.sweep.subdir)
        pack = None
        if len(members) > 1:
            pack = packing.write_pack(sweep_dir, [configs[n] for n in member_nums])
            config, name = copy.deepcopy(config), pack
        with open_dict(config):
            # resolved here: ${now:...} in the sweep dir would give another time in the job
            config.hydra.sweep.dir = str(sweep_dir)
            config.hydra.sweep.subdir = name
            if pack is not None:
                config.hydra.output_subdir = None  # a pack's folder is no job dir: the members get their .hydra/
        for num in member_nums:
            record = manifest.job(num)
            assert record is not None
            record.pack, record.launcher_job, record.cancelled, record.waiting = pack, None, False, False
        out.append((member_nums, Unit(launcher.hydra_context, launcher.task_function, config, state)))
    return out


def executor(launcher: Any, job_name: str) -> Any:
    """A submitit executor as the hydra-submitit launcher builds it, its jobs named `job_name`."""
    import submitit

    kind, params = launcher._EXECUTOR, launcher.params
    requeues = {f"{kind}_max_num_timeout": params["max_num_timeout"]} if "max_num_timeout" in params else {}
    result = submitit.AutoExecutor(cluster=kind, folder=params["submitit_folder"], **requeues)
    settings = {**prelaunch.launcher_settings(params, kind), "name": job_name}
    result.update_parameters(**settings)
    return result


def max_array_size() -> int:
    """SLURM's MaxArraySize: an array's task indices must stay below it."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return DEFAULT_MAX_ARRAY_SIZE
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return int(value.strip())
    return DEFAULT_MAX_ARRAY_SIZE


def job_name(launcher: Any, sweep_dir: Path) -> str:
    """The base of the sweep's SLURM job names (each submission adds the sweep's id and its count): the sweep's own
    hydra.launcher.name where it set one, else `fmsweep:<sweep dir's name>`."""
    name = launcher.params.get("name")
    return f"fmsweep:{sweep_dir.name}" if name in (None, launcher.config.hydra.job.name) else str(name)


def submit(launcher: Any, manifest: Manifest, planned: list[tuple[list[int], Unit]], reserve: int = 0) -> list[Any]:
    """Submit the units as submitit jobs (on SLURM, arrays of at most MaxArraySize tasks, each recorded before its
    sbatch and settled after: fmsweep.sweep.submission) and record each one's id in the manifest, saved after each
    submission; return the submitit jobs. Each submission and its record happen under the record's lock, on the
    record as it is then: a `fmsweep cancel` that came meanwhile keeps its marks, and nothing more is submitted (it
    cancels what was). On SLURM, no more than the cluster's submit limit has room for, less `reserve` (the job that
    writes the results): the rest is recorded as waiting for room (fmsweep.sweep.feed). A refused sbatch is a
    UserError saying what was submitted and what was not, unless the submit limit refused it (then it waits)."""
    if not planned:
        return []
    slurm = launcher._EXECUTOR == "slurm"
    base = job_name(launcher, manifest.sweep_dir)
    ex = executor(launcher, base)
    chunk = max_array_size() if slurm else len(planned)
    try:
        limit = feed.limit(launcher.params, manifest.submit_limit) if slurm else None
    except Silent:  # how many jobs are queued is unknown: sbatch's refusal, should the limit be reached, says it
        limit = None
    room = limit.room(manifest.leave_free) - reserve if limit else len(planned)
    jobs: list[Any] = []
    first = 0
    while first < len(planned) and room > 0:
        part = planned[first : first + min(chunk, room)]
        with locked(manifest.sweep_dir):
            record = load(manifest.sweep_dir) or manifest
            left = sum(len(nums) for nums, _ in planned[first:])
            if any(entry.cancelled for nums, _ in part for n in nums if (entry := record.job(n)) is not None):
                print(f"fmsweep: the sweep was cancelled while it was submitted: {left} job(s) not submitted")
                return jobs
            units = [unit for _, unit in part]
            if not slurm:
                submitted = submit_units(ex, units)
                ids = [str(job.job_id) for job in submitted]
            else:
                sent = submission.begin(record, "jobs", len(part), base)
                for task, (nums, _) in enumerate(part):
                    for num in nums:
                        job = record.job(num)
                        assert job is not None
                        job.submission, job.task = sent.name, task if len(part) > 1 else None
                try:
                    submitted = submission.sbatch(record, sent, ex, functools.partial(submit_units, ex, units))
                except submission.Refused as exc:
                    cause = feed.refused_for_limit(exc.said)
                    if cause is None:
                        done = sum(len(nums) for nums, _ in planned[:first])
                        said = prelaunch.gpu_refusal(launcher.params, exc.said) or exc  # a filter of one GPU form
                        raise UserError(
                            f"{said}; {done} job(s) submitted, {left} not yet: fmsweep resume {manifest.sweep_dir} "
                            "submits them"
                        ) from None
                    if len(part) > 1:  # an array is taken whole or not at all: try half of it
                        chunk = len(part) // 2
                        record.save()
                        continue
                    if limit is None or limit.source.startswith("learned"):  # the cluster did not state its limit
                        with suppress(Silent):
                            manifest.submit_limit = record.submit_limit = feed.queued(launcher.params)
                    wait_for_room(
                        launcher,
                        manifest,
                        record,
                        planned[first:],
                        f"sbatch refused job {part[0][0][0]} of {len(manifest.jobs)}: {cause}",
                    )
                    return jobs
                ids = [str(job.job_id) for job in submitted]
            for (nums, _), job_id in zip(part, ids):
                for num in nums:
                    mine, theirs = manifest.job(num), record.job(num)
                    assert mine is not None and theirs is not None
                    theirs.launcher_job, theirs.waiting = job_id, False
                    mine.launcher_job, mine.submission, mine.task = job_id, theirs.submission, theirs.task
                    mine.waiting = False
            manifest.submissions = record.submissions
            record.save()
            feed.forget(manifest.sweep_dir, [num for nums, _ in part for num in nums])
        jobs += submitted
        first += len(part)
        room -= len(part)
    if first < len(planned):
        assert limit is not None
        with locked(manifest.sweep_dir):
            record = load(manifest.sweep_dir) or manifest
            free = f", {manifest.leave_free} left free (hydra.sweeper.leave_free)" if manifest.leave_free else ""
            why = f"the cluster's submit limit ({limit.text()}{free})"
            wait_for_room(launcher, manifest, record, planned[first:], why)
    return jobs


def wait_for_room(
    launcher: Any, manifest: Manifest, record: Manifest, waiting: list[tuple[list[int], Unit]], why: str
) -> None:
    """Record the `waiting` units as waiting for room under the cluster's submit limit (fmsweep.sweep.feed keeps
    them to submit later), and say so; a UserError when nothing of the sweep is queued to submit them. The caller
    holds the record's lock."""
    feed.park(manifest.sweep_dir, launcher, waiting)
    new = any(not (job := record.job(nums[0])) or not job.waiting for nums, _ in waiting)
    for nums, _ in waiting:
        for num in nums:
            for each in (manifest, record):
                job = each.job(num)
                assert job is not None
                job.waiting = True
    record.save()
    from fmsweep.sweep import status

    submitted = sum(bool(job.launcher_job) for job in record.jobs)
    left = feed.waiting(record)
    view = status.look(record, accounting=False)
    if not (view.alive or view.finish_alive or view.silent):
        raise UserError(
            f"{why}; nothing of the sweep is queued, and the cluster takes no more of your jobs now: {left} job(s) not "
            f"submitted; fmsweep resume {manifest.sweep_dir} submits them once your other jobs left room"
        )
    if new:  # (those that waited before were said when they began to)
        print(f"fmsweep: {why}; {submitted} submitted, {left} not yet; they will be submitted as room frees up")


def submit_units(ex: Any, units: list[Unit]) -> list[Any]:
    """Submit `units` with the executor `ex`: an array, or a lone job for one unit."""
    return ex.submit_array(units) if len(units) > 1 else [ex.submit(units[0])]


def run_here(launcher: Any, planned: list[tuple[list[int], Unit]]) -> Exception | None:
    """Run the units in this process, one after another, as Hydra's basic launcher does; the first failed job's
    error."""
    setup_globals()
    error = None
    for nums, unit in planned:
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
        result = unit(str(nums[0]))
        if result.status == JobStatus.FAILED and error is None:
            error = result._return_value
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return error


def wait(jobs: list[Any]) -> Exception | None:
    """Wait for every submitit job to end; the first failed one's error (the job's own, not through its return
    value, which would print "Error executing job")."""
    error = None
    for job in jobs:
        while not job.done():  # submitit's own wait looks once a second
            time.sleep(JOB_POLL_S)
        try:
            result = job.results()[0]
        except Exception as exc:  # noqa: BLE001 (killed, cancelled, or failed outside Hydra's job: reported)
            error = error or exc
            continue
        if isinstance(result, JobReturn) and result.status == JobStatus.FAILED:  # a search's worker returns a count
            error = error or result._return_value
    return error


def launch(launcher: Any, manifest: Manifest, configs: dict[int, DictConfig], detach: bool = False) -> Exception | None:
    """Launch the jobs `configs` holds (by number; the manifest records them) and, attached, show the live status
    until every job of the sweep has ended (those launched here, and any an earlier launch left alive); return the
    first failed job's error."""
    from fmsweep.sweep import status

    sweep_dir = manifest.sweep_dir
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(launcher.config, sweep_dir / "multirun.yaml")
    planned = units(launcher, manifest, configs)
    with locked(sweep_dir):
        manifest.save()
    if len(planned) < len(configs):
        print(
            f"fmsweep: {len(configs)} jobs in {len(planned)} launcher jobs "
            f"(pack={max(int(c.pack) for c in configs.values())})"
        )
    if detach:
        submitted = submit(launcher, manifest, planned, reserve=1)  # room for the job that writes the results
        try:
            finish = submit_finish(launcher, manifest)
        except feed.NoRoom as exc:  # the sweep's jobs submit it as they end, with what waits
            print(detached_lines(manifest, [str(j.job_id) for j in submitted], None))
            print(f"fmsweep: {exc}; the sweep's jobs submit it as room frees up")
            return None
        except UserError:
            print(detached_lines(manifest, [str(j.job_id) for j in submitted], None))
            raise
        print(detached_lines(manifest, [str(j.job_id) for j in submitted], finish))
        if finish is None:  # nothing left to wait for: the results are written now
            from fmsweep.sweep.summary import write_results

            write_results(sweep_dir)
        return None
    earlier = status.alive(manifest) - set(configs)
    return attend(
        launcher,
        manifest,
        list(configs),
        lambda: run_here(launcher, planned),
        lambda: submit(launcher, manifest, planned),
        lambda: bool(earlier & status.alive(manifest)),
        # the record has the ids of what was submitted, also when the Ctrl-C came amid the submission
        lambda: list(
            dict.fromkeys(job.launcher_job for job in manifest.jobs if job.num in configs and job.launcher_job)
        ),
        lambda jobs: fed(launcher, manifest, planned, jobs),
    )


def fed(launcher: Any, manifest: Manifest, planned: list[tuple[list[int], Unit]], submitted: list[Any]) -> list[Any]:
    """An attached launch's jobs: those `submitted`, and, while jobs of `planned` wait for room under the cluster's
    submit limit, those submitted as the earlier ones end (the launch holds the launch lock: it feeds the queue,
    not its jobs); every submitit job, once none waits."""
    jobs = list(submitted)
    while True:
        record = load(manifest.sweep_dir) or manifest
        waiting = [
            (nums, unit)
            for nums, unit in planned
            if (job := record.job(nums[0])) is not None and job.waiting and not job.cancelled
        ]
        if not waiting:
            return jobs
        if not all(job.done() for job in jobs):
            time.sleep(ALIVE_POLL_S)
        jobs += submit(launcher, manifest, waiting)


def attend(
    launcher: Any,
    manifest: Manifest,
    launched: list[int],
    here: Callable[[], Exception | None],
    submit_all: Callable[[], list[Any]],
    earlier_alive: Callable[[], bool],
    submitted_ids: Callable[[], list[str]],
    feed_more: Callable[[list[Any]], list[Any]] = list,
) -> Exception | None:
    """An attached launch: with the live status shown, run the launch `here` (basic launcher) or `submit_all` its
    submitit jobs and wait for them and those `feed_more` submits as they end (a grid's jobs waiting for room under
    the submit limit), then for what an earlier launch left alive; the first failed job's error. A
    Ctrl-C is one line naming what keeps running (`submitted_ids`) and how to resume, exit code 130."""
    from fmsweep.sweep.live_status import LiveStatus

    sweep_dir, kind = manifest.sweep_dir, type(launcher).__name__
    # jobs of the basic launcher print their own progress here: their status comes one line per change
    stream = sys.stdout if kind != "BasicLauncher" else cast(TextIO, _Lines(sys.stdout))
    quiet = _quiet_controllers(sweep_dir) if kind == "LocalLauncher" else nullcontext()
    error = None
    with LiveStatus(manifest, launched, stream=stream), quiet:
        try:
            if kind == "BasicLauncher":
                error = here()
            else:
                submitted = submit_all()
                if kind == "SlurmLauncher" and submitted:
                    ids = [str(j.job_id) for j in submitted]
                    print(
                        f"fmsweep: submitted {len(ids)} SLURM job(s): {ids_text(ids)}; watch from any shell: "
                        f"fmsweep status {sweep_dir}; cancel: fmsweep cancel {sweep_dir}"
                    )
                error = wait(feed_more(submitted))
            while earlier_alive():
                time.sleep(ALIVE_POLL_S)
        except KeyboardInterrupt:
            if kind == "BasicLauncher":  # its jobs run here and handle SIGINT themselves (fmsweep.__main__.task)
                raise
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while the line is made: no traceback
            print(interrupted_line(kind == "SlurmLauncher", submitted_ids(), sweep_dir), file=sys.stderr)
            sys.exit(128 + signal.SIGINT)
    return error


def launch_workers(launcher: Any, manifest: Manifest, workers: list[Any], detach: bool = False) -> Exception | None:
    """Run a search's workers: here, one after another (basic), or as submitit jobs recorded in the manifest as
    soon as submitted (`workers`); attached, with the live status until they ended (and any worker an earlier launch
    left alive); detached (SLURM), return once they and the job that writes the results are submitted. The first
    failed worker's error."""
    from fmsweep.sweep import status

    sweep_dir = manifest.sweep_dir
    OmegaConf.save(launcher.config, sweep_dir / "multirun.yaml")

    def submit_all() -> list[Any]:
        if not workers:
            return []
        base = job_name(launcher, sweep_dir)
        ex = executor(launcher, base)
        with locked(sweep_dir):
            record = load(sweep_dir) or manifest
            if launcher._EXECUTOR != "slurm":
                submitted = ex.submit_array(workers)
                record.workers += [str(job.job_id) for job in submitted]
            else:
                entry = submission.begin(record, "workers", len(workers), base)
                try:
                    submitted = submission.sbatch(record, entry, ex, lambda: ex.submit_array(workers))
                except submission.Refused as exc:
                    raise UserError(
                        f"{exc}; no worker was submitted: fmsweep resume {sweep_dir} submits them"
                    ) from None
            record.save()
        manifest.workers, manifest.submissions = record.workers, record.submissions
        return submitted

    if detach:
        ids = [str(job.job_id) for job in submit_all()]
        try:
            finish = submit_finish(launcher, manifest, ids)
        except UserError:
            print(detached_lines(manifest, ids, None))
            raise
        print(detached_lines(manifest, ids, finish))
        return None

    def here() -> None:
        setup_globals()
        for worker in workers:
            worker(local_id())
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)

    earlier = bool(manifest.workers)
    return attend(
        launcher,
        manifest,
        [],
        here,
        submit_all,
        lambda: earlier and bool(status.look(load(sweep_dir) or manifest, accounting=False).workers_alive),
        lambda: list(manifest.workers),
    )


def local_id() -> str:
    """The id of a search's worker run in the launching process (the basic launcher): its pid."""
    return str(os.getpid())


def submit_finish(launcher: Any, manifest: Manifest, waits: Sequence[str] = ()) -> str | None:
    """Make the sweep's one SLURM job that writes its results once its live jobs and `waits` (a search's new
    workers) ended (afterany): one an earlier launch left pending waits for these too (its dependency updated),
    else a new one is submitted (recorded as every submission is) in place of one that no longer waits. Its id;
    None when nothing of the sweep is alive (the caller writes the results now). A UserError when it cannot be made
    (SLURM does not answer, sbatch refuses): the jobs run on, and `fmsweep resume` makes it."""
    from fmsweep.sweep import status

    view = status.look(manifest, accounting=False)
    again = f"fmsweep resume {manifest.sweep_dir} submits it"
    try:
        # a search's workers of an earlier launch that are queued or running, with or without a trial yet
        workers = status.slurm_view(manifest.workers, accounting=False) if not view.silent else {}
    except Silent as exc:
        view = replace(view, silent=str(exc))
    if view.silent:
        raise UserError(
            f"SLURM does not answer ({view.silent}): the job that writes the results is not submitted; {again}"
        )
    alive_jobs = sorted(
        {
            entry.launcher_job.partition("_")[0]
            for n in view.alive
            if (entry := manifest.job(n)) is not None and entry.launcher_job
        }
        | {job.partition("_")[0] for job in waits}
        | {worker.partition("_")[0] for worker, job in workers.items() if job.state not in status.SLURM_ENDED}
    )
    old = manifest.finish_job if view.finish_alive else None
    if alive_jobs and old and (view.finish or "").startswith("PENDING"):
        dependency = f"Dependency=afterany:{':'.join(alive_jobs)}"
        if subprocess.run(["scontrol", "update", f"JobId={old}", dependency], capture_output=True).returncode == 0:
            return old
    if old:
        done = subprocess.run(["scancel", old], capture_output=True, text=True)
        if done.returncode != 0 or not ended(old):
            why = done.stderr.strip() or f"still listed {CANCEL_WAIT_S} s after scancel"
            raise UserError(
                f"the earlier job {old} that writes the results could not be cancelled ({why}): no second one was "
                f"submitted; {again}"
            )
    return submit_results(launcher, manifest, alive_jobs) if alive_jobs else None


def ended(job_id: str) -> bool:
    """Wait up to CANCEL_WAIT_S for SLURM to list the job `job_id` as ended (or no longer): a cancelled job that
    runs is COMPLETING until its processes are gone. Whether it ended."""
    from fmsweep.sweep import status

    deadline = time.monotonic() + CANCEL_WAIT_S
    while True:
        try:
            job = status.slurm_view([job_id], accounting=False).get(job_id)
        except Silent:
            job = status.SlurmJob("UNKNOWN", "")
        if job is None or job.state in status.SLURM_ENDED:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(JOB_POLL_S)


def submit_results(launcher: Any, manifest: Manifest, waits: list[str]) -> str:
    """Submit the job that writes the sweep's results once the SLURM jobs `waits` ended; record it; its id."""
    import submitit

    params = launcher.params
    ex = submitit.AutoExecutor(cluster="slurm", folder=params["submitit_folder"])
    optional = {f"slurm_{k}": params[k] for k in ("partition", "account", "qos") if params.get(k)}
    ex.update_parameters(
        timeout_min=30,
        cpus_per_task=1,
        mem_gb=4,
        **optional,
        slurm_additional_parameters={"dependency": f"afterany:{':'.join(waits)}"},
    )
    with locked(manifest.sweep_dir):  # a search's workers may have added trials since `manifest` was read
        record = load(manifest.sweep_dir) or manifest
        entry = submission.begin(record, "results", 1, f"{job_name(launcher, manifest.sweep_dir)}:results")
        try:
            submission.sbatch(record, entry, ex, lambda: [ex.submit(finish, str(manifest.sweep_dir))])
        except submission.Refused as exc:
            cause = feed.refused_for_limit(exc.said)
            if cause:
                raise feed.NoRoom(f"sbatch refused the job that writes the results: {cause}") from None
            raise UserError(f"{exc}; fmsweep resume {manifest.sweep_dir} submits it") from None
    manifest.finish_job, manifest.submissions = record.finish_job, record.submissions
    assert record.finish_job is not None
    return record.finish_job


def detached_lines(manifest: Manifest, ids: list[str], finish_job: str | None) -> str:
    """What a detached launch prints: the sweep dir, its SLURM jobs (a search's workers), and how to watch, cancel
    and resume it."""
    sweep_dir = manifest.sweep_dir
    if manifest.kind == "search":
        lines = [f"fmsweep: detached search {sweep_dir}: {manifest.trials} trials, {len(ids)} worker(s)"]
    else:
        lines = [f"fmsweep: detached sweep {sweep_dir}: {len(manifest.jobs)} jobs"]
    lines.append(f"fmsweep: submitted SLURM job(s) {ids_text(ids)}" if ids else "fmsweep: nothing to submit")
    if finish_job:
        lines.append(f"fmsweep: job {finish_job} writes the report (and ensemble) once they end")
    lines.append(
        f"fmsweep: watch: fmsweep status {sweep_dir} --watch; cancel: fmsweep cancel {sweep_dir}; "
        f"resume: fmsweep resume {sweep_dir}"
    )
    return "\n".join(lines)


def interrupted_line(slurm: bool, job_ids: list[str], sweep_dir: Path) -> str:
    """The one line of a sweep whose launching command got Ctrl-C while its submitit jobs (`job_ids`) ran. SLURM
    jobs keep running: how to watch or cancel them. The processes of submitit_local got the Ctrl-C too (they are in
    the terminal's process group): they save their last.pt and stop, which is awaited; those that did not (SIGINT
    sent to this process alone) keep running, and are named. Then how to resume the sweep."""
    resume = f"fmsweep resume {sweep_dir}"
    if not job_ids:
        return f"fmsweep: interrupted before a job was submitted; resume the sweep with: {resume}"
    if slurm:
        return (
            f"fmsweep: interrupted; the sweep's SLURM jobs {ids_text(job_ids)} keep running (watch: fmsweep "
            f"status {sweep_dir} --watch; cancel: fmsweep cancel {sweep_dir}); once they ended, resume the "
            f"sweep with: {resume}"
        )
    running = _wait_for_children([int(i) for i in job_ids], LOCAL_STOP_S)
    if running:
        pids = " ".join(map(str, running))
        return (
            f"fmsweep: interrupted; the sweep's submitit_local jobs (pids {pids}) keep running (stop them: "
            f"fmsweep cancel {sweep_dir}); once they ended, resume the sweep with: {resume}"
        )
    return (
        f"fmsweep: interrupted; the sweep's jobs got the Ctrl-C too and stopped, each resumable from its last.pt; "
        f"resume the sweep with: {resume}"
    )


def _wait_for_children(pids: list[int], timeout_s: float) -> list[int]:
    """Wait up to `timeout_s` for the child processes `pids` to end; return those still running."""
    deadline, running = time.monotonic() + timeout_s, list(pids)
    while running and time.monotonic() < deadline:
        time.sleep(0.1)
        running = [pid for pid in running if _running(pid)]
    return running


def _running(pid: int) -> bool:
    """Whether the child process `pid` still runs (reaping it if it ended)."""
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:  # already reaped (by submitit), or not our child
        return False


@contextmanager
def _quiet_controllers(sweep_dir: Path) -> Iterator[None]:
    """Start submitit_local's job controllers with their stderr in sweep_dir/.submitit/controllers.err instead of
    this terminal: a Ctrl-C reaches them too, and each would print a KeyboardInterrupt traceback after the sweep's
    line. (What the jobs write goes to their own logs.)"""
    from submitit.local import local

    start = local.start_controller

    def start_quietly(*args: Any, **kwargs: Any) -> Any:
        (sweep_dir / ".submitit").mkdir(parents=True, exist_ok=True)
        with open(sweep_dir / ".submitit" / "controllers.err", "ab") as err:
            terminal = os.dup(2)
            os.dup2(err.fileno(), 2)  # the controller inherits fd 2
            try:
                return start(*args, **kwargs)
            finally:
                os.dup2(terminal, 2)
                os.close(terminal)

    local.start_controller = start_quietly
    try:
        yield
    finally:
        local.start_controller = start


class _Lines:
    """A stream that says it is no terminal, so that the live status writes lines instead of redrawing."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def top_up(sweep_dir: Path, successor: bool = False) -> str:
    """Submit the sweep's waiting jobs that the submit limit has room for now, and make the job that writes the
    results of a detached sweep wait for them too (or submit it, where the limit had no room for it before: room is
    kept for it first). Skipped while a launch of the sweep runs (it submits them). With `successor` (called by that
    job itself, which is ending), a new one is made to wait for what is alive. What came of it: `none waiting`,
    `launching`, `submitted` (a job that writes the results waits), or `no room` (jobs wait, and nothing of the sweep
    is alive to submit them)."""
    from fmsweep.sweep import status

    record = load(sweep_dir)
    if record is None or not (sweep_dir / feed.WAITING / feed.LAUNCHER).exists():
        return "none waiting"  # a sweep that never waited for room: its results job waits for all of it
    no_finish = record.detach and record.finish_job is None  # sbatch refused it for the limit
    if not (feed.waiting(record) or successor or no_finish):
        return "none waiting"
    with ExitStack() as held:
        try:
            held.enter_context(launching(sweep_dir))
        except UserError:
            return "launching"
        # what an earlier job submitted without recording it (killed amid its submission) is adopted, not submitted
        # again; where SLURM does not answer, a UserError: nothing is submitted
        record = submission.settle_record(sweep_dir, "nothing was submitted")
        assert record is not None
        if successor:
            record.finish_job = None  # this job, which is ending: neither replaced nor waited for
        with feed.outside_job():
            launcher, planned = feed.parked(sweep_dir, record)
            reserve = int(record.detach and record.finish_job is None)
            submitted = submit(launcher, record, planned, reserve) if planned else []
            if submitted:
                ids = ids_text([str(job.job_id) for job in submitted])
                left = feed.waiting(record)
                print(f"fmsweep: submitted {len(submitted)} of the waiting jobs ({ids}); {left} still wait")
            if not (submitted or successor or no_finish):
                return "none waiting" if not feed.waiting(record) else "no room"
            if record.detach and status.look(record, accounting=False).alive:  # attached: the command writes them
                try:
                    submit_finish(launcher, record)
                except feed.NoRoom:
                    return "no room"  # the next of the sweep's jobs to end (or this one, again) submits it
                return "submitted"
        return "no room" if feed.waiting(record) else "none waiting"


def feed_after_job(sweep_dir: Path) -> None:
    """The end of one of the sweep's SLURM jobs: submit what waits for room (`top_up`), saying so in its log; a
    failure is a line there, never the job's."""
    try:
        top_up(sweep_dir)
    except Exception as exc:  # noqa: BLE001 (the job trained: whatever went wrong here is said, and the next job tries)
        print(f"fmsweep: the sweep's waiting jobs were not submitted from this job: {type(exc).__name__}: {exc}")


def finish(sweep_dir: str) -> None:
    """The job that ends a detached grid: submit what still waits for room first (and a successor of this job, which
    waits for it); once nothing waits, write the results (fmsweep.results.finish)."""
    from fmsweep.results import finish as results

    folder = Path(sweep_dir)
    deadline = time.monotonic() + FINISH_PATIENCE_S
    while True:
        try:
            outcome = top_up(folder, successor=True)
        except UserError as exc:  # SLURM does not answer: looked at again in a while
            print(f"fmsweep: {exc}")
            outcome = "no room"
        if outcome == "submitted":
            print("fmsweep: jobs of the sweep still wait or run: a new job writes the results once they end")
            return
        if outcome == "launching":
            print("fmsweep: a launch of the sweep runs: it makes the job that writes the results")
            return
        if outcome == "none waiting":
            break
        if time.monotonic() > deadline:
            record = load(folder)
            print(
                f"fmsweep: {feed.waiting(record) if record else '?'} job(s) still wait for room under the cluster's "
                "submit limit, and nothing of the sweep is queued to submit them: "
                f"fmsweep resume {sweep_dir} submits them"
            )
            return
        time.sleep(FINISH_RETRY_S)
    results.finish(sweep_dir)
