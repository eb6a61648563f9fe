"""`hydra/sweeper=optuna`: an Optuna search whose trials are fmsweep jobs (fmsweep.sweep.search). Hydra accepts
sweepers only from the hydra_plugins package, hence this module."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper


class SearchSweeper(Sweeper):
    """Runs `n_trials` trials of the space `params` and the command line's sweeps, at most `n_jobs` at a time,
    each drawn by `sampler` from the study in `storage`, trained as a job of the sweep and told its `objective`
    (valid_loss or valid_acc) once it ended; pruned by `pruner` (none, median, halving) with that pruner's settings
    (`median`, `halving`). `detach` (SLURM): the workers that run the trials are submitted and the command returns."""

    def __init__(
        self,
        params: Any,
        n_trials: int,
        n_jobs: int,
        objective: str,
        seed: int,
        sampler: str,
        storage: str | None,
        pruner: str,
        median: Any,
        halving: Any,
        detach: bool = False,
    ) -> None:
        self.params, self.n_trials, self.n_jobs, self.objective, self.seed = params, n_trials, n_jobs, objective, seed
        self.sampler, self.storage, self.pruner, self.median, self.halving = sampler, storage, pruner, median, halving
        self.detach = detach
        self.config: Any = None
        self.launcher: Any = None
        self.hydra_context: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        from fmsweep.sweep import search  # imported late: Hydra imports every plugin module at start-up

        search.run_search(self, arguments)
