"""Optuna search for `hydra/sweeper=optuna`: the search space from Hydra's sweep overrides, the study in the sweep
dir, and the trial side of pruning.

The study lives in `<sweep dir>/optuna.journal`, Optuna's journal file storage, which is safe on a cluster's shared
filesystem; running the same command with that sweep dir continues it. Trial n is job n: its job dir is
`<n>_<overrides>` as in a grid sweep. With pruning, each trial reports its objective to the study after every
epoch from inside its job (`Trial`, read from the job dir's place in the sweep dir) and stops once the pruner
rejects it.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from omegaconf import OmegaConf

from fmsweep.errors import UserError

log = logging.getLogger(__name__)
JOURNAL = "optuna.journal"
STUDY = "fmsweep"
OBJECTIVES = {"valid_loss": "minimize", "valid_acc": "maximize"}
PRUNERS = ("none", "median", "halving")


def storage(sweep_dir: Path) -> Any:
    import optuna

    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep_dir / JOURNAL)))


def make_pruner(name: str, epochs: int) -> Any:
    """The pruner of a search, for a trial of `epochs` epochs: median stops a trial worse than the median of the
    others at the same epoch (after 2 trials finished); halving is successive halving (`Halving`); none never
    prunes."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "halving":
        return Halving(epochs)
    return optuna.pruners.NopPruner()


class Halving:
    """Asynchronous successive halving over a run's epochs: at rungs of 1, 3, 9, ... epochs a trial goes on only if
    it is among the best third of the trials that reached the rung. The rungs stop at a third of the run: past the
    last one a trial trains to the end, as in Hyperband's brackets, whose top rung is the whole run (a trial
    stopped later would have cost most of a run and saved little)."""

    RATE = 3

    def __init__(self, epochs: int) -> None:
        import optuna

        self.rungs = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=self.RATE)
        self.epochs = epochs

    def prune(self, study: Any, trial: Any) -> bool:
        step = trial.last_step
        return step is not None and step * self.RATE <= self.epochs and self.rungs.prune(study, trial)


def distribution(override: Override) -> Any:
    """The Optuna distribution of a sweep override, as Hydra's Optuna sweeper reads them: interval(a,b) a float
    range (tag int: integers; tag log: log scale), range(a,b[,step]) integers, a,b,c or choice(...) a category."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    try:
        if isinstance(value, IntervalSweep):
            log_scale = "log" in value.tags
            if "int" in value.tags:
                return IntDistribution(int(value.start), int(value.end), log=log_scale)
            return FloatDistribution(float(value.start), float(value.end), log=log_scale)
        if isinstance(value, RangeSweep):
            stop = value.stop - value.step
            if all(float(v).is_integer() for v in (value.start, value.stop, value.step)):
                return IntDistribution(int(value.start), int(stop), step=int(value.step))
            return FloatDistribution(float(value.start), float(stop), step=float(value.step))
        if isinstance(value, ChoiceSweep):
            return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    except ValueError as exc:
        raise UserError(f"{override.input_line}: not a search space ({exc})") from None
    raise UserError(f"{override.input_line}: not a search space (use interval(a,b), range(a,b), choice(a,b) or a,b)")


def split(arguments: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The command line's fixed overrides, and the search space of its sweep overrides (key -> distribution)."""
    fixed, space = [], {}
    for override in OverridesParser.create().parse_overrides(arguments):
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            fixed.append(override.input_line)
    if not space:
        raise UserError("hydra/sweeper=optuna needs a search space: e.g. 'optimizer.lr=tag(log,interval(1e-4,1e-1))'")
    return fixed, space


def override_value(value: Any) -> str:
    """A sampled value as a Hydra override value."""
    return repr(value) if isinstance(value, float) else str(value)


class Trial:
    """The study's side of one trial, seen from its job: report the objective after each epoch, and whether the
    study's pruner stops it there."""

    def __init__(self, sweep_dir: Path, number: int, epochs: int) -> None:
        import optuna

        self.study = optuna.load_study(study_name=STUDY, storage=storage(sweep_dir))
        self.study.pruner = make_pruner(self.study.user_attrs["pruner"], epochs)
        self.objective = self.study.user_attrs["objective"]
        self.trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        self.trial = optuna.Trial(self.study, self.trial_id)

    @classmethod
    def of(cls, run_dir: Path, epochs: int) -> Trial | None:
        """The trial that `run_dir` is the job dir of, when it belongs to a search that prunes (without a pruner
        the study needs only the final objective, which the sweeper reads from metrics.json)."""
        hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
        if not (run_dir.parent / JOURNAL).is_file() or not hydra_yaml.is_file():
            return None
        trial = cls(run_dir.parent, int(OmegaConf.load(hydra_yaml).hydra.job.num), epochs)
        return trial if trial.study.user_attrs["pruner"] != "none" else None

    def prune(self, epoch: int, row: dict[str, float]) -> bool:
        """Report the objective of the trial's best epoch so far (`row`, what the trial would end with); whether
        the pruner stops the trial here."""
        value = row[self.objective]
        if not math.isfinite(value):
            return False
        self.trial.report(value, epoch)
        return self.trial.should_prune()
