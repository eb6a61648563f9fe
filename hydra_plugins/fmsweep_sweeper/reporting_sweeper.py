"""Hydra's basic sweeper that waits for every job, then reports failed or unfinished ones (fmsweep.sweep_status).

Hydra accepts sweepers only from the hydra_plugins package, hence this module."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class ReportingSweeper(BasicSweeper):
    """BasicSweeper whose sweep ends with a summary of the jobs that did not complete (exit code 1 if any)."""

    def sweep(self, arguments: list[str]) -> Any:
        from fmsweep.sweep_status import report  # imported late: Hydra imports every plugin module at start-up

        try:
            returns, error = super().sweep(arguments), None
        except Exception as exc:  # the first failed job's error, raised once all jobs of the batch ended
            returns, error = None, exc
        report(Path(self.config.hydra.sweep.dir), error)
        return returns
