"""Hydra's basic sweeper, made to check the whole sweep before launching it, pack jobs that can train together
(pack=K), show the jobs' status while they run, and end with the jobs that failed (fmsweep.prelaunch,
fmsweep.packing, fmsweep.live_status, fmsweep.sweep_status).

Hydra accepts sweepers only from the hydra_plugins package, hence this module."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus


class ReportingSweeper(BasicSweeper):
    """BasicSweeper that validates every job first (a bad one: one line, exit 2, nothing launched), launches packs of
    jobs as one job each, shows a live status of the jobs while they run, and ends with a summary of the jobs that
    did not complete (exit code 1 if any)."""

    def sweep(self, arguments: list[str]) -> Any:
        from fmsweep import prelaunch  # imported late: Hydra imports every plugin module at start-up
        from fmsweep.errors import UserError, exit_with
        from fmsweep.sweep_status import report

        assert self.config is not None and self.hydra_context is not None and self.launcher is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        batches = self.split_arguments(parser.parse_overrides([*self._parse_config(), *arguments]), None)
        job_overrides = [list(job) for batch in batches for job in batch]
        try:
            configs = prelaunch.check_jobs(self.hydra_context.config_loader, self.config, job_overrides)
            if is_slurm(self.launcher):
                prelaunch.check_slurm_request(self.launcher.params)
        except UserError as exc:
            exit_with(exc)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        returns, error = launch(self.launcher, self.config, job_overrides, configs, self.max_batch_size)
        report(sweep_dir, error)
        return returns


def is_slurm(launcher: Any) -> bool:
    return type(launcher).__name__ == "SlurmLauncher"


def launch(launcher: Any, config: Any, job_overrides: list[list[str]], configs: list[Any],
           batch_size: int | None = None, others: Sequence[str] = ()) -> tuple[list[Any], Exception | None]:
    """Launch checked jobs (their overrides and composed configs, numbered consecutively) in packs as their `pack`
    says, `batch_size` launcher jobs at a time, with the live status on stdout meanwhile (its counts including
    `others`, the states of the sweep's jobs launched apart); return the launcher's returns and the first failed
    job's error."""
    from omegaconf import OmegaConf

    from fmsweep import packing
    from fmsweep.live_status import Job, LiveStatus

    sweep_dir = Path(config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    packs = packing.plan(configs)
    launched = packing.launch_overrides(sweep_dir, job_overrides, configs, packs)
    jobs = [Job(str(configs[i].hydra.sweep.subdir), int(configs[i].epochs), task)
            for task, members in enumerate(packs) for i in members]
    if len(packs) < len(configs):
        print(f"fmsweep: {len(configs)} jobs in {len(packs)} launcher jobs (pack={max(c.pack for c in configs)})")
    # jobs of the basic launcher print their own progress here: their status comes one line per change
    stream = sys.stdout if type(launcher).__name__ != "BasicLauncher" else _Lines(sys.stdout)
    returns, error, size, first_num = [], None, batch_size or len(launched), int(configs[0].hydra.job.num)
    with LiveStatus(sweep_dir, jobs, stream=stream, slurm=is_slurm(launcher), others=others):
        try:
            for first in range(0, len(launched), size):
                results = launcher.launch(launched[first : first + size], initial_job_idx=first_num + first)
                for result in results:  # the error of a failed job, once all jobs of the batch ended
                    if result.status == JobStatus.FAILED:  # (return_value would also print Hydra's "Error executing job")
                        raise result._return_value
                returns.append(results)
        except Exception as exc:
            error = exc
    return returns, error


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
