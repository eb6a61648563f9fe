"""The trial side of a search's pruning, run inside a trial's job (fmsweep.train): the trial its job dir is, found
from its .hydra/, reporting its objective to the study after every epoch, and the pruner the search recorded that
decides whether it stops there. It imports only where the study lives (fmsweep.sweep.storage): a run pulls nothing
of the sweep side."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fmsweep.sweep import storage


def make_pruner(name: str, settings: dict[str, int], epochs: int) -> Any:
    """The pruner of a search, for a trial of `epochs` epochs: median stops a trial worse than the median of the
    others at the same epoch, once `startup_trials` trials completed and past the trial's first `warmup_epochs`
    epochs; halving is successive halving (`Halving`); none never prunes."""
    import optuna

    if name == "median":
        # epochs are reported as steps 1, 2, ...: a trial can be pruned at step n_warmup_steps and later
        return optuna.pruners.MedianPruner(
            n_startup_trials=settings["startup_trials"], n_warmup_steps=settings["warmup_epochs"] + 1
        )
    if name == "halving":
        return Halving(epochs, settings["min_epochs"], settings["reduction_factor"])
    return optuna.pruners.NopPruner()


class Halving:
    """Asynchronous successive halving over a run's epochs: at rungs of m, m*r, m*r^2, ... epochs (m min_epochs,
    r reduction_factor) a trial goes on only if it is among the best 1/r of the trials that reached the rung. The
    rungs stop at 1/r of the run: past the last one a trial trains to the end, as in Hyperband's brackets, whose top
    rung is the whole run (a trial stopped later would have cost most of a run and saved little)."""

    def __init__(self, epochs: int, min_epochs: int = 1, reduction_factor: int = 3) -> None:
        import optuna

        self.rungs = optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=reduction_factor)
        self.epochs, self.min_epochs, self.reduction_factor = epochs, min_epochs, reduction_factor

    def prune(self, study: Any, trial: Any) -> bool:
        step = trial.last_step
        return step is not None and step * self.reduction_factor <= self.epochs and self.rungs.prune(study, trial)


class Trial:
    """The study's side of one trial, seen from its job: report the objective after each epoch, and whether the
    study's pruner stops it there."""

    def __init__(self, sweep_dir: Path, spec: str | None, number: int, epochs: int) -> None:
        import optuna

        self.study = storage.load_study(spec, sweep_dir)
        attrs = self.study.user_attrs
        self.study.pruner = make_pruner(attrs["pruner"], attrs.get("pruner_settings", {}), epochs)
        self.objective = self.study.user_attrs["objective"]
        self.trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        self.trial = optuna.Trial(self.study, self.trial_id)

    @classmethod
    def of(cls, run_dir: Path, epochs: int) -> Trial | None:
        """The trial that `run_dir` is the job dir of, when it belongs to a search that prunes (without a pruner
        the study needs only the final objective, which the worker reads from metrics.json)."""
        hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
        if not hydra_yaml.is_file():
            return None
        hydra = OmegaConf.load(hydra_yaml)
        if not str(OmegaConf.select(hydra, "hydra.sweeper._target_", default="")).endswith(".SearchSweeper"):
            return None
        trial = cls(run_dir.parent, storage.spec(hydra), int(hydra.hydra.job.num), epochs)
        return trial if trial.study.user_attrs["pruner"] != "none" else None

    def prune(self, epoch: int, row: dict[str, float]) -> bool:
        """Report the objective of the trial's best epoch so far (`row`, what the trial would end with); whether
        the pruner stops the trial here."""
        value = row[self.objective]
        if not math.isfinite(value):
            return False
        self.trial.report(value, epoch)
        return self.trial.should_prune()
