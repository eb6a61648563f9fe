"""`hydra/sweeper=grid` (the default): Hydra's basic sweeper made durable by fmsweep.sweep.grid. Hydra accepts
sweepers only from the hydra_plugins package, hence this module."""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser


class ReportingSweeper(BasicSweeper):
    """Every combination of the command line's sweeps, checked before launch, recorded in the sweep dir, packed,
    shown while it runs and summed up at the end; `detach` (SLURM) returns once the jobs are submitted; under the
    cluster's submit limit, `leave_free` of it is left to the user's other jobs."""

    def __init__(self, params: Any = None, detach: bool = False, leave_free: Any = 0) -> None:
        super().__init__(max_batch_size=None, params=params)
        self.detach, self.leave_free = detach, leave_free

    def sweep(self, arguments: list[str]) -> None:
        from fmsweep.sweep import grid  # imported late: Hydra imports every plugin module at start-up

        assert self.config is not None and self.hydra_context is not None and self.launcher is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        batches = self.split_arguments(parser.parse_overrides([*self._parse_config(), *arguments]), None)
        grid.sweep(self, [list(job) for batch in batches for job in batch], bool(self.detach))
