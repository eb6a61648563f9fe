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


def check_settings(n_trials: Any, n_jobs: Any, objective: Any, seed: Any, pruner: Any, detach: Any) -> None:
    """The search's own settings (hydra.sweeper.*): a bad one is a UserError naming it and what it takes."""
    for name, value, ok in (("n_trials", n_trials, isinstance(n_trials, int) and n_trials >= 1),
                            ("n_jobs", n_jobs, isinstance(n_jobs, int) and n_jobs >= 1),
                            ("objective", objective, objective in OBJECTIVES),
                            ("pruner", pruner, pruner in PRUNERS),
                            ("seed", seed, isinstance(seed, int))):
        if not ok:
            expected = {"objective": ", ".join(OBJECTIVES), "pruner": ", ".join(PRUNERS)}.get(
                name, "an integer >= 1" if name != "seed" else "an integer")
            raise UserError(f"hydra.sweeper.{name} must be {expected}, got {value!r}")
    if detach:
        raise UserError("hydra.sweeper.detach=true: a search cannot be detached yet (this command asks each trial as "
                        "the earlier ones end); run it attached, e.g. in a SLURM job of its own; nothing was launched")


def corners(fixed: list[str], space: dict[str, Any]) -> list[list[str]]:
    """Trial overrides to check a search space with: every key at its low end, then at its high end, then each
    choice of each category (the other keys low)."""
    def ends(pick: int) -> dict[str, Any]:
        return {k: d.choices[pick] if hasattr(d, "choices") else (d.low, d.high)[pick] for k, d in space.items()}

    trials = [ends(0), ends(-1)]
    trials += [{**ends(0), key: choice} for key, d in space.items() for choice in getattr(d, "choices", ())]
    return [[*fixed, *(f"{k}={override_value(v)}" for k, v in trial.items())] for trial in trials]


def run_search(sweeper: Any, arguments: list[str]) -> None:
    """Run `n_trials` trials, `n_jobs` at a time: each batch asks the study for parameters, checks and records the
    trials as jobs of the sweep (sweep.json), launches them, and tells the study each one's `objective`
    (valid_loss, minimized, or valid_acc, maximized), or that it was pruned or failed. The study is continued
    where the sweep dir already holds one: finished trials count, trials a killed search left running are launched
    again (they resume from their last.pt)."""
    import os
    import sys

    import optuna
    from optuna.trial import TrialState

    from fmsweep import tracking
    from fmsweep.errors import exit_with
    from fmsweep.sweep import launch, manifest, prelaunch
    from fmsweep.sweep.grid import is_slurm
    from fmsweep.sweep.summary import report

    loader, launcher = sweeper.hydra_context.config_loader, sweeper.launcher
    sweep_dir = Path(sweeper.config.hydra.sweep.dir)
    try:
        check_settings(sweeper.n_trials, sweeper.n_jobs, sweeper.objective, sweeper.seed, sweeper.pruner,
                       sweeper.detach)
        fixed, space = split(arguments)
        # the space's corners, checked before the study exists: a bad key or value of the space is one line
        checked = prelaunch.check_jobs(loader, sweeper.config, corners(fixed, space))
        if is_slurm(launcher):
            prelaunch.check_slurm_request(launcher.params)
        record = manifest.load(sweep_dir)
        if record is not None and record.kind != "search":
            raise UserError(f"{sweep_dir} holds a {record.kind} sweep, not a search: choose another hydra.sweep.dir; "
                            f"nothing was launched")
    except UserError as exc:
        exit_with(exc)
    if sweeper.pruner == "halving" and min(int(c.epochs) for c in checked) < Halving.RATE:
        print(f"fmsweep: note: pruner=halving stops trials at epochs 1, 3, 9, ... up to a third of their run: "
              f"trials of fewer than {Halving.RATE} epochs are never pruned")
    record = record or manifest.Manifest(sweep_dir=sweep_dir, kind="search", launcher="", command=[], cwd="")
    record.launcher, record.command, record.cwd = manifest.LAUNCHERS[type(launcher).__name__], sys.argv[1:], os.getcwd()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY, storage=storage(sweep_dir), load_if_exists=True,
        direction=OBJECTIVES[sweeper.objective], sampler=optuna.samplers.TPESampler(seed=sweeper.seed))
    # the trials prune themselves, from inside their jobs (Trial), with the pruner named here
    study.set_user_attr("objective", sweeper.objective)
    study.set_user_attr("pruner", sweeper.pruner)
    error = None
    while True:
        trials = study.get_trials(deepcopy=False)
        ended = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials)
        left_running = [t.number for t in trials if t.state == TrialState.RUNNING]
        if ended >= sweeper.n_trials and not left_running:
            break
        # trials a killed search left running go first, as one batch of theirs: they resume in their job dirs
        numbers = left_running[: sweeper.n_jobs] or [
            study.ask(space).number for _ in range(min(sweeper.n_jobs, sweeper.n_trials - ended))]
        configs = {}
        for n in numbers:
            overrides = [*fixed, *(f"{k}={override_value(v)}" for k, v in study.trials[n].params.items())]
            try:
                cfg = prelaunch.check_jobs(loader, sweeper.config, [overrides], first_num=n)[0]
            except UserError as exc:
                for m in numbers:
                    study.tell(m, state=TrialState.FAIL)
                exit_with(exc)
            configs[n] = cfg
            if record.job(n) is None:
                record.jobs.append(manifest.JobRecord(num=n, name=str(cfg.hydra.sweep.subdir), overrides=overrides,
                                                      epochs=int(cfg.epochs)))
        record.save()
        not_asked = ["pending"] * max(sweeper.n_trials - len(study.get_trials(deepcopy=False)), 0)
        error = launch.launch(launcher, record, configs, others=not_asked) or error
        for n, cfg in configs.items():
            metrics = tracking.read_metrics(sweep_dir / str(cfg.hydra.sweep.subdir)) or {}
            if metrics.get("status") == "completed":
                study.tell(n, metrics[sweeper.objective])
            else:
                study.tell(n, state=TrialState.PRUNED if metrics.get("status") == "pruned" else TrialState.FAIL)
    print_best(study, sweeper.objective)
    report(sweep_dir, error)


def print_best(study: Any, objective: str) -> None:
    """The search's counts of trials by how they ended, and its best trial."""
    from optuna.trial import TrialState

    counts = {state.name.lower(): sum(t.state == state for t in study.trials)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    print(f"fmsweep: search of {len(study.trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if counts["complete"]:
        best = study.best_trial
        print(f"fmsweep: best trial {best.number}: {objective} {best.value:.4f} with "
              + " ".join(f"{k}={v}" for k, v in best.params.items()))
