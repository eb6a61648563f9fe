"""A grid sweep (every combination of the command line's sweeps, as Hydra's basic sweeper expands them), made
durable: every job checked before anything launches, the sweep recorded in its sweep dir, and a rerun of it (the
same command, or `fmsweep resume DIR`) launching only the jobs that are neither completed nor alive."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fmsweep import tracking
from fmsweep.errors import UserError, exit_with
from fmsweep.sweep import launch, manifest, prelaunch, status, submission
from fmsweep.sweep.manifest import JobRecord, Manifest

SHOWN_NAMES = 5  # job names listed in a line about skipped jobs


def record(
    sweep_dir: Path, kind: str, launcher: Any, detach: bool, configs: list[DictConfig], job_overrides: list[list[str]]
) -> Manifest:
    """The sweep's record for these checked jobs. Where the sweep dir already records a sweep, it must be the same
    one (the same jobs, each with the same overrides; UserError naming the first difference), and what it knows of
    each job (pack, launcher job, cancelled) is kept."""
    jobs = [
        JobRecord(
            num=int(cfg.hydra.job.num),
            name=str(cfg.hydra.sweep.subdir),
            overrides=list(overrides),
            epochs=int(cfg.epochs),
        )
        for cfg, overrides in zip(configs, job_overrides)
    ]
    old = manifest.load(sweep_dir)
    if old is not None:
        again = f"rerun it with its own command (fmsweep resume {sweep_dir}) or choose another hydra.sweep.dir"
        if old.kind != kind or len(old.jobs) != len(jobs):
            raise UserError(
                f"{sweep_dir} holds another sweep ({old.kind} of {len(old.jobs)} jobs; this command "
                f"makes a {kind} of {len(jobs)}): {again}; nothing was launched"
            )
        for job, before in zip(jobs, old.jobs):
            difference = manifest.differences(before, job.overrides)
            if difference:
                raise UserError(
                    f"job {before.num} of the sweep in {sweep_dir} ({before.name}) differs: "
                    f"{difference}: {again}; nothing was launched"
                )
            job.pack, job.launcher_job, job.cancelled = before.pack, before.launcher_job, before.cancelled
            job.submission, job.task, job.waiting = before.submission, before.task, before.waiting
    made = Manifest(
        sweep_dir=sweep_dir,
        kind=kind,
        launcher=manifest.LAUNCHERS[type(launcher).__name__],
        command=sys.argv[1:],
        cwd=os.getcwd(),
        detach=detach,
        jobs=jobs,
        finish_job=old.finish_job if old else None,
    )
    if old:
        made.sweep_id, made.submissions, made.sbatches = old.sweep_id, old.submissions, old.sbatches
        made.submit_limit = old.submit_limit
    return made


def names(jobs: list[JobRecord]) -> str:
    shown = ", ".join(job.name for job in jobs[:SHOWN_NAMES])
    return shown + (f", … ({len(jobs) - SHOWN_NAMES} more)" if len(jobs) > SHOWN_NAMES else "")


def to_launch(sweep: Manifest, configs: list[DictConfig]) -> dict[int, DictConfig]:
    """The configs of the jobs to launch, by number: all but the completed ones (skipped without a launcher job)
    and those still alive from an earlier launch (left to it); a line says which were left out. A UserError where
    SLURM does not answer for a job that is not completed: it may still run, and nothing is launched."""
    done = [job for job in sweep.jobs if tracking.completed(sweep.sweep_dir / job.name)]
    view = status.look(sweep, accounting=False)
    unknown = [job for job in sweep.jobs if view.statuses[job.num].state == "unknown"]
    if unknown:
        raise UserError(
            f"SLURM does not answer ({view.silent}): {len(unknown)} job(s) of {sweep.sweep_dir} may still be queued "
            f"or running ({names(unknown)}); nothing was launched (try again once squeue answers)"
        )
    alive = view.alive - {job.num for job in done}
    living = [job for job in sweep.jobs if job.num in alive]
    if done:
        print(f"fmsweep: {len(done)} of {len(sweep.jobs)} jobs completed before, skipped: {names(done)}")
    if living:
        ids = sorted({job.launcher_job for job in living if job.launcher_job})
        print(
            f"fmsweep: {len(living)} job(s) still alive from an earlier launch, left to it: {names(living)}"
            + (f" (launcher jobs {', '.join(ids)})" if ids else "")
        )
    skipped = {job.num for job in [*done, *living]}
    return {int(cfg.hydra.job.num): cfg for cfg in configs if int(cfg.hydra.job.num) not in skipped}


def sweep(sweeper: Any, job_overrides: list[list[str]], detach: bool) -> None:
    """Check, record and launch the grid's jobs (see the module); attached, end with the sweep's summary."""
    from fmsweep.sweep.summary import report

    launcher, config = sweeper.launcher, sweeper.config
    sweep_dir = Path(config.hydra.sweep.dir)
    with contextlib.ExitStack() as held:
        try:
            prelaunch.check_detach(detach, launcher)
            leave_free = sweeper.leave_free
            if type(leave_free) is not int or leave_free < 0:
                raise UserError(
                    f"hydra.sweeper.leave_free must be a whole number of jobs, 0 or more, not {leave_free!r}"
                )
            configs = prelaunch.check_jobs(sweeper.hydra_context.config_loader, config, job_overrides)
            if prelaunch.is_slurm(launcher):
                prelaunch.check_slurm_request(launcher.params)
            held.enter_context(manifest.launching(sweep_dir))  # checked: from here on, the one launcher of the sweep
            submission.settle_record(sweep_dir)  # what an earlier launch submitted without recording it
            sweep_record = record(sweep_dir, "grid", launcher, detach, configs, job_overrides)
            sweep_record.leave_free = leave_free
            launching = to_launch(sweep_record, configs)
        except UserError as exc:
            exit_with(exc)
        try:
            error = launch.launch(launcher, sweep_record, launching, detach=detach)
        except UserError as exc:
            exit_with(exc)
        if not detach:
            report(sweep_dir, error)
