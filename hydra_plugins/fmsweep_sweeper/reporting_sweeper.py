"""Hydra's basic sweeper, made to check the whole sweep before launching it, show its jobs' status while they
run, and end with the jobs that failed (fmsweep.prelaunch, fmsweep.live_status, fmsweep.sweep_status).

Hydra accepts sweepers only from the hydra_plugins package, hence this module."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser


class ReportingSweeper(BasicSweeper):
    """BasicSweeper that validates every job first (a bad one: one line, exit 2, nothing launched), shows a live
    status while the jobs run, and ends with a summary of the jobs that did not complete (exit code 1 if any)."""

    def sweep(self, arguments: list[str]) -> Any:
        # imported late: Hydra imports every plugin module at start-up
        from fmsweep import prelaunch
        from fmsweep.errors import UserError, exit_with
        from fmsweep.live_status import LiveStatus
        from fmsweep.sweep_status import report

        assert self.config is not None and self.hydra_context is not None and self.launcher is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        batches = self.split_arguments(parser.parse_overrides([*self._parse_config(), *arguments]), self.max_batch_size)
        slurm = type(self.launcher).__name__ == "SlurmLauncher"
        try:
            jobs = prelaunch.check_jobs(self.hydra_context.config_loader, self.config,
                                        [job for batch in batches for job in batch])
            if slurm:
                prelaunch.check_slurm_request(self.launcher.params)
        except UserError as exc:
            exit_with(exc)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        # jobs of the basic launcher print their own progress here: their status comes one line per change
        stream = sys.stdout if type(self.launcher).__name__ != "BasicLauncher" else _Lines(sys.stdout)
        with LiveStatus(sweep_dir, jobs, stream=stream, slurm=slurm):
            try:
                returns, error = super().sweep(arguments), None
            except Exception as exc:  # the first failed job's error, raised once all jobs of the batch ended
                returns, error = None, exc
        report(sweep_dir, error)
        return returns


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
