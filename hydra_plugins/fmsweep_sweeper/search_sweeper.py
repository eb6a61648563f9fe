"""`hydra/sweeper=optuna`: an Optuna search whose trials are fmsweep jobs (fmsweep.sweep.search). Hydra accepts
sweepers only from the hydra_plugins package, hence this module."""
from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper


class SearchSweeper(Sweeper):
    """Runs `n_trials` trials, `n_jobs` at a time, each asked from the study, launched as a job of the sweep and
    told its `objective` (valid_loss or valid_acc) once it ended; pruned by `pruner` (none, median, halving) with
    that pruner's settings (`median`, `halving`)."""

    def __init__(self, n_trials: int, n_jobs: int, objective: str, seed: int, pruner: str, median: Any, halving: Any,
                 detach: bool = False) -> None:
        self.n_trials, self.n_jobs, self.objective, self.seed, self.pruner = n_trials, n_jobs, objective, seed, pruner
        self.median, self.halving = median, halving
        self.detach = detach
        self.config: Any = None
        self.launcher: Any = None
        self.hydra_context: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from fmsweep.sweep import search  # imported late: Hydra imports every plugin module at start-up

        search.run_search(self, arguments)
