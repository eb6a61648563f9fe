"""Optuna search for `hydra/sweeper=optuna`: the search space from Hydra's sweep overrides, the study in the sweep
dir, and the trial side of pruning.

The study lives in `<sweep dir>/optuna.journal`, Optuna's journal file storage, which is safe on a cluster's shared
filesystem; running the same command with that sweep dir continues it. Trial n is job n: its job dir is
`<n>_<overrides>` as in a grid sweep. With pruning, each trial reports its objective to the study after every
epoch from inside its job (`Trial`, read from the job dir's place in the sweep dir) and stops once the pruner
rejects it.

A continuation must continue the same search: the study records what its trials train (the objective, the fixed
overrides but for machine-only keys, the space) and a command that differs in any of them is refused. Its sampler
is seeded from the seed and the number of trials the study holds, so it draws new settings, not the first launch's.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
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
# each pruner's settings (hydra.sweeper.<pruner>.<key>) and the least value each takes
PRUNER_SETTINGS = {"median": {"startup_trials": 0, "warmup_epochs": 0},
                   "halving": {"min_epochs": 1, "reduction_factor": 2}}


def storage(sweep_dir: Path) -> Any:
    import optuna

    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep_dir / JOURNAL)))


def make_pruner(name: str, settings: dict[str, int], epochs: int) -> Any:
    """The pruner of a search, for a trial of `epochs` epochs: median stops a trial worse than the median of the
    others at the same epoch, once `startup_trials` trials completed and past the trial's first `warmup_epochs`
    epochs; halving is successive halving (`Halving`); none never prunes."""
    import optuna

    if name == "median":
        # epochs are reported as steps 1, 2, ...: a trial can be pruned at step n_warmup_steps and later
        return optuna.pruners.MedianPruner(n_startup_trials=settings["startup_trials"],
                                           n_warmup_steps=settings["warmup_epochs"] + 1)
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


def describe(dist: Any) -> str:
    """A distribution in words, e.g. `log interval(1e-05, 0.1)`, `int interval(1, 8) step 2`, `choice(fc, cnn)`."""
    from optuna.distributions import IntDistribution

    if hasattr(dist, "choices"):
        return f"choice({', '.join(map(str, dist.choices))})"
    words = ["log"] * dist.log + ["int"] * isinstance(dist, IntDistribution)
    words.append(f"interval({dist.low!r}, {dist.high!r})")
    if dist.step is not None and not (isinstance(dist, IntDistribution) and dist.step == 1):
        words.append(f"step {dist.step!r}")
    return " ".join(words)


def setup(objective: str, fixed: list[str], space: dict[str, Any], machine_keys: list[str]) -> dict[str, Any]:
    """What a search's trials train, as the study records it (user attrs) and a continuation must match: the
    objective, the sorted fixed overrides but those of `machine_keys` (where data is, which device: conf/config.yaml's
    hydra.job.config.override_dirname.exclude_keys), and each searched key's distribution as Optuna's JSON."""
    from optuna.distributions import distribution_to_json

    kept = [o.input_line for o in OverridesParser.create().parse_overrides(fixed) if o.key_or_group not in machine_keys]
    return {"objective": objective, "fixed": sorted(kept),
            "space": {key: distribution_to_json(dist) for key, dist in sorted(space.items())}}


def differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """How the setup a study recorded differs from this command's, one phrase each; keys the study did not record
    (a study of an older fmsweep) are taken as they are."""
    from optuna.distributions import json_to_distribution

    found = []
    if recorded.get("objective", wanted["objective"]) != wanted["objective"]:
        found.append(f"objective={recorded['objective']} in the study, objective={wanted['objective']} here")
    if "fixed" in recorded and recorded["fixed"] != wanted["fixed"]:
        theirs = [o for o in recorded["fixed"] if o not in wanted["fixed"]]
        ours = [o for o in wanted["fixed"] if o not in recorded["fixed"]]
        found.append(f"fixed overrides {' '.join(theirs) or 'none'} in the study, {' '.join(ours) or 'none'} here")
    if "space" in recorded:
        theirs = {k: json_to_distribution(v) for k, v in recorded["space"].items()}
        ours = {k: json_to_distribution(v) for k, v in wanted["space"].items()}
        for key in sorted(theirs.keys() | ours.keys()):
            if theirs.get(key) != ours.get(key):
                study_side, here = (describe(side[key]) if key in side else "not searched" for side in (theirs, ours))
                found.append(f"{key}: {study_side} in the study, {here} here")
    return found


def sampler_seed(seed: int, trials: int) -> int:
    """The TPE sampler's seed for a launch of a search whose study holds `trials` trials: `seed` for a fresh search,
    a seed drawn from both for a continuation (the same seed again would replay the first launch's draws)."""
    import numpy as np

    return seed if trials == 0 else int(np.random.SeedSequence([seed, trials]).generate_state(1)[0])


def open_study(sweep_dir: Path, wanted: dict[str, Any], seed: int, pruner: str, settings: dict[str, int],
               machine_keys: Sequence[str] = ()) -> Any:
    """The search's study in `sweep_dir`: created with the setup `wanted` recorded, or continued when the setup it
    recorded is the same (else a UserError naming the differences and that `machine_keys` may differ, before
    anything is written); its sampler seeded by `sampler_seed`. The pruner and its settings are recorded on every
    launch: the trials build it from them."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal = sweep_dir / JOURNAL
    if journal.is_file() and STUDY in optuna.get_all_study_names(storage(sweep_dir)):
        study = optuna.load_study(study_name=STUDY, storage=storage(sweep_dir))
        found = differences(study.user_attrs, wanted)
        if found:
            free = f" ({', '.join(machine_keys)} may differ)" if machine_keys else ""
            raise UserError(f"the search in {sweep_dir} was started with another setup: {'; '.join(found)}; continue "
                            f"it with the same one{free} or choose another hydra.sweep.dir; nothing was launched")
        study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(seed, len(study.get_trials(deepcopy=False))))
    else:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(study_name=STUDY, storage=storage(sweep_dir),
                                    direction=OBJECTIVES[wanted["objective"]],
                                    sampler=optuna.samplers.TPESampler(seed=seed))
    for key, value in {**wanted, "pruner": pruner, "pruner_settings": settings}.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    return study


def override_value(value: Any) -> str:
    """A sampled value as a Hydra override value."""
    return repr(value) if isinstance(value, float) else str(value)


class Trial:
    """The study's side of one trial, seen from its job: report the objective after each epoch, and whether the
    study's pruner stops it there."""

    def __init__(self, sweep_dir: Path, number: int, epochs: int) -> None:
        import optuna

        self.study = optuna.load_study(study_name=STUDY, storage=storage(sweep_dir))
        attrs = self.study.user_attrs
        self.study.pruner = make_pruner(attrs["pruner"], attrs.get("pruner_settings", {}), epochs)
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


def check_settings(n_trials: Any, n_jobs: Any, objective: Any, seed: Any, pruner: Any, detach: Any,
                   pruners: dict[str, Any]) -> dict[str, int]:
    """The search's own settings (hydra.sweeper.*; `pruners`: each pruner's settings by name): a bad one is a
    UserError naming it and what it takes. The settings of the chosen pruner, as plain ints."""
    def integer(value: Any, least: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    for name, value, ok in (("n_trials", n_trials, integer(n_trials, 1)),
                            ("n_jobs", n_jobs, integer(n_jobs, 1)),
                            ("objective", objective, objective in OBJECTIVES),
                            ("pruner", pruner, pruner in PRUNERS),
                            ("seed", seed, integer(seed, 0) and seed < 2**32)):
        if not ok:
            expected = {"objective": ", ".join(OBJECTIVES), "pruner": ", ".join(PRUNERS),
                        "seed": "an integer in [0, 2**32)"}.get(name, "an integer >= 1")
            raise UserError(f"hydra.sweeper.{name} must be {expected}, got {value!r}")
    for name, least in PRUNER_SETTINGS.items():
        given = pruners.get(name)
        if not isinstance(given, Mapping) or set(given) != set(least):
            keys = ", ".join(given) if isinstance(given, Mapping) else repr(given)
            raise UserError(f"hydra.sweeper.{name} takes {', '.join(least)}, got {keys or 'none'}")
        for key, value in given.items():
            if not integer(value, least[key]):
                raise UserError(f"hydra.sweeper.{name}.{key} must be an integer >= {least[key]}, got {value!r}")
    if detach:
        raise UserError("hydra.sweeper.detach=true: a search cannot be detached yet (this command asks each trial as "
                        "the earlier ones end); run it attached, e.g. in a SLURM job of its own; nothing was launched")
    return {key: int(value) for key, value in pruners.get(pruner, {}).items()}


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

    from optuna.trial import TrialState

    from fmsweep import tracking
    from fmsweep.errors import exit_with
    from fmsweep.sweep import launch, manifest, prelaunch
    from fmsweep.sweep.grid import is_slurm
    from fmsweep.sweep.summary import report

    loader, launcher = sweeper.hydra_context.config_loader, sweeper.launcher
    sweep_dir = Path(sweeper.config.hydra.sweep.dir)
    try:
        settings = check_settings(sweeper.n_trials, sweeper.n_jobs, sweeper.objective, sweeper.seed, sweeper.pruner,
                                  sweeper.detach, {"median": sweeper.median, "halving": sweeper.halving})
        fixed, space = split(arguments)
        # the space's corners, checked before the study exists: a bad key or value of the space is one line
        checked = prelaunch.check_jobs(loader, sweeper.config, corners(fixed, space))
        if is_slurm(launcher):
            prelaunch.check_slurm_request(launcher.params)
        record = manifest.load(sweep_dir)
        if record is not None and record.kind != "search":
            raise UserError(f"{sweep_dir} holds a {record.kind} sweep, not a search: choose another hydra.sweep.dir; "
                            f"nothing was launched")
        machine_keys = list(OmegaConf.select(sweeper.config, "hydra.job.config.override_dirname.exclude_keys") or [])
        # the trials prune themselves, from inside their jobs (Trial), with the pruner recorded here
        study = open_study(sweep_dir, setup(sweeper.objective, fixed, space, machine_keys), sweeper.seed,
                           sweeper.pruner, settings, machine_keys)
    except UserError as exc:
        exit_with(exc)
    if sweeper.pruner == "halving":
        first, factor = settings["min_epochs"], settings["reduction_factor"]
        if min(int(c.epochs) for c in checked) < first * factor:
            print(f"fmsweep: note: pruner=halving stops trials at epochs {first}, {first * factor}, "
                  f"{first * factor ** 2}, ... up to 1/{factor} of their run: trials of fewer than {first * factor} "
                  f"epochs are never pruned")
    record = record or manifest.Manifest(sweep_dir=sweep_dir, kind="search", launcher="", command=[], cwd="")
    record.launcher, record.command, record.cwd = manifest.LAUNCHERS[type(launcher).__name__], sys.argv[1:], os.getcwd()
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
