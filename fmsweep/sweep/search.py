"""Optuna search for `hydra/sweeper=optuna`: its checks, its study, and the launch of its workers.

The study lives in `<sweep dir>/optuna.journal`, Optuna's journal file storage, which is safe on a cluster's shared
filesystem, or in the storage `hydra.sweeper.storage` names (fmsweep.sweep.storage); running the same command with
that sweep dir continues it. Trial n is job n: its job dir is `<n>_<overrides>` as in a grid sweep. The trials are
run by workers (fmsweep.sweep.worker), each a slot that asks a new trial as soon as its last one ended. With
pruning, each trial reports its objective to the study after every epoch from inside its job (fmsweep.sweep.trial,
found from its job dir's .hydra/) and stops once the pruner rejects it.

A continuation must continue the same search: the study records what its trials train (the objective, the fixed
overrides but for machine-only keys, the space) and a command that differs in any of them is refused. Each trial is
drawn by a sampler seeded from the seed and the trial's number: a continuation draws new settings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from fmsweep.errors import UserError
from fmsweep.sweep.space import describe, readable

log = logging.getLogger(__name__)
OBJECTIVES: dict[str, Literal["minimize", "maximize"]] = {"valid_loss": "minimize", "valid_acc": "maximize"}
PRUNERS = ("none", "median", "halving")
# each pruner's settings (hydra.sweeper.<pruner>.<key>) and the least value each takes
PRUNER_SETTINGS = {
    "median": {"startup_trials": 0, "warmup_epochs": 0},
    "halving": {"min_epochs": 1, "reduction_factor": 2},
}


def setup(objective: str, fixed: list[str], space: dict[str, Any], machine_keys: list[str]) -> dict[str, Any]:
    """What a search's trials train, as the study records it (user attrs) and a continuation must match: the
    objective, the sorted fixed overrides but those of `machine_keys` (where data is, which device: conf/config.yaml's
    hydra.job.config.override_dirname.exclude_keys), and each searched key's distribution as Optuna's JSON."""
    from optuna.distributions import distribution_to_json

    kept = [o.input_line for o in OverridesParser.create().parse_overrides(fixed) if o.key_or_group not in machine_keys]
    return {
        "objective": objective,
        "fixed": sorted(kept),
        "space": {key: distribution_to_json(dist) for key, dist in sorted(space.items())},
    }


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
        their_space = {k: json_to_distribution(v) for k, v in recorded["space"].items()}
        our_space = {k: json_to_distribution(v) for k, v in wanted["space"].items()}
        for key in sorted(their_space.keys() | our_space.keys()):
            if their_space.get(key) != our_space.get(key):
                study_side, here = (
                    describe(side[key]) if key in side else "not searched" for side in (their_space, our_space)
                )
                found.append(f"{key}: {study_side} in the study, {here} here")
    return found


def open_study(
    sweep_dir: Path,
    spec: str | None,
    wanted: dict[str, Any],
    seed: int,
    sampler: str,
    pruner: str,
    settings: dict[str, int],
    machine_keys: Sequence[str] = (),
) -> Any:
    """The search's study in its storage (`spec`: fmsweep.sweep.storage): created with the setup `wanted`
    recorded, or continued when the setup it recorded is the same (else a UserError naming the differences and that
    `machine_keys` may differ, before anything is written). The sampler, its seed (worker.sampler_seed) and the
    pruner with its settings are recorded on every launch: the workers draw with them, the trials prune with them
    (fmsweep.sweep.trial)."""
    import optuna

    from fmsweep.sweep import storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = storage.study_name(spec, sweep_dir)
    # opening a journal creates its file: a sweep dir without one holds no study, and a refusal writes nothing
    where = storage.open(spec, sweep_dir) if spec or (sweep_dir / storage.JOURNAL).is_file() else None
    if where is not None and name in optuna.get_all_study_names(where):
        study = optuna.load_study(study_name=name, storage=where)
        found = differences(study.user_attrs, wanted)
        if found:
            free = f" ({', '.join(machine_keys)} may differ)" if machine_keys else ""
            raise UserError(
                f"the search in {sweep_dir} was started with another setup: {'; '.join(found)}; continue "
                f"it with the same one{free} or choose another hydra.sweep.dir; nothing was launched"
            )
    else:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            study_name=name, storage=where or storage.open(spec, sweep_dir), direction=OBJECTIVES[wanted["objective"]]
        )
    drawn = {"sampler": sampler, "seed": seed, "pruner": pruner, "pruner_settings": settings}
    for key, value in {**wanted, **drawn}.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    return study


def check_settings(
    n_trials: Any, n_jobs: Any, objective: Any, seed: Any, pruner: Any, pruners: dict[str, Any]
) -> dict[str, int]:
    """The search's own settings (hydra.sweeper.*; `pruners`: each pruner's settings by name): a bad one is a
    UserError naming it and what it takes. The settings of the chosen pruner, as plain ints."""

    def integer(value: Any, least: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    for name, value, ok in (
        ("n_trials", n_trials, integer(n_trials, 1)),
        ("n_jobs", n_jobs, integer(n_jobs, 1)),
        ("objective", objective, objective in OBJECTIVES),
        ("pruner", pruner, pruner in PRUNERS),
        ("seed", seed, integer(seed, 0) and seed < 2**32),
    ):
        if not ok:
            expected = {
                "objective": ", ".join(OBJECTIVES),
                "pruner": ", ".join(PRUNERS),
                "seed": "an integer in [0, 2**32)",
            }.get(name, "an integer >= 1")
            raise UserError(f"hydra.sweeper.{name} must be {expected}, got {value!r}")
    for name, least in PRUNER_SETTINGS.items():
        given = pruners.get(name)
        if not isinstance(given, Mapping) or set(given) != set(least):
            keys = ", ".join(given) if isinstance(given, Mapping) else repr(given)
            raise UserError(f"hydra.sweeper.{name} takes {', '.join(least)}, got {keys or 'none'}")
        for key, value in given.items():
            if not integer(value, least[key]):
                raise UserError(f"hydra.sweeper.{name}.{key} must be an integer >= {least[key]}, got {value!r}")
    return {key: int(value) for key, value in pruners.get(pruner, {}).items()}


def run_search(sweeper: Any, arguments: list[str]) -> None:
    """Check the search (its settings, the corners of its space, the storage, a continued study's setup), record it
    (sweep.json) and run it: at most `n_jobs` workers (fmsweep.sweep.worker) at once, each asking, training and
    telling trials until the study holds `n_trials` ended trials; the basic launcher runs one worker, here. Attached,
    the live status runs until the workers ended, then the best trial and the report; detached (SLURM), the command
    returns once the workers and the job that writes the results are submitted. A continued study's trials that a
    killed launch left running are resumed from their last.pt by the workers."""
    import contextlib
    import os
    import sys

    from fmsweep.errors import exit_with
    from fmsweep.sweep import launch, manifest, prelaunch, space, status, storage, submission, worker
    from fmsweep.sweep.summary import report

    loader, launcher = sweeper.hydra_context.config_loader, sweeper.launcher
    sweep_dir = Path(sweeper.config.hydra.sweep.dir)
    with contextlib.ExitStack() as held:
        try:
            settings = check_settings(
                sweeper.n_trials,
                sweeper.n_jobs,
                sweeper.objective,
                sweeper.seed,
                sweeper.pruner,
                {"median": sweeper.median, "halving": sweeper.halving},
            )
            space.make_sampler(sweeper.sampler, sweeper.seed)  # an unknown sampler is one line, here
            prelaunch.check_detach(bool(sweeper.detach), launcher)
            fixed, searched = space.split(arguments, sweeper.params)
            # the space's corners, checked before the study exists: a bad key or value of the space is one line
            checked = prelaunch.check_jobs(loader, sweeper.config, space.corners(fixed, searched))
            if prelaunch.is_slurm(launcher):
                prelaunch.check_slurm_request(launcher.params)
            spec = storage.spec(sweeper.config)
            storage.check(spec)
            held.enter_context(manifest.launching(sweep_dir))  # checked: from here on, the one launcher of the search
            record = submission.settle_record(sweep_dir)  # with what an earlier launch submitted unrecorded
            if record is not None and record.kind != "search":
                raise UserError(
                    f"{sweep_dir} holds a {record.kind} sweep, not a search: choose another hydra.sweep.dir; "
                    f"nothing was launched"
                )
            earlier = 0  # workers of an earlier launch still queued or running: they take trials too
            if record is not None and (record.workers or record.jobs):
                view = status.look(record, accounting=False)
                if view.silent:
                    raise UserError(
                        f"SLURM does not answer ({view.silent}): the workers and trials of {sweep_dir} may still be "
                        f"queued or running; nothing was launched (try again once squeue answers)"
                    )
                earlier = view.workers_alive
            excluded = OmegaConf.select(sweeper.config, "hydra.job.config.override_dirname.exclude_keys")
            machine_keys = list(excluded or [])
            # the trials prune themselves, from inside their jobs (trial.Trial), with the pruner recorded here
            study = open_study(
                sweep_dir,
                spec,
                setup(sweeper.objective, fixed, searched, machine_keys),
                sweeper.seed,
                sweeper.sampler,
                sweeper.pruner,
                settings,
                machine_keys,
            )
        except UserError as exc:
            exit_with(exc)
        if sweeper.pruner == "halving":
            first, factor = settings["min_epochs"], settings["reduction_factor"]
            if min(int(c.epochs) for c in checked) < first * factor:
                print(
                    f"fmsweep: note: pruner=halving stops trials at epochs {first}, {first * factor}, "
                    f"{first * factor**2}, ... up to 1/{factor} of their run: trials of fewer than {first * factor} "
                    f"epochs are never pruned"
                )
        print(f"fmsweep: study {study.study_name} in {storage.describe(spec, sweep_dir)}")
        plan = worker.Plan(
            sweep_dir=sweep_dir,
            storage=spec,
            fixed=fixed,
            space=searched,
            objective=sweeper.objective,
            n_trials=sweeper.n_trials,
            pack=max(int(checked[0].pack), 1),
        )
        with manifest.locked(sweep_dir):
            record = manifest.load(sweep_dir) or manifest.Manifest(
                sweep_dir=sweep_dir, kind="search", launcher="", command=[], cwd=""
            )
            record.launcher, record.command, record.cwd = (
                manifest.LAUNCHERS[type(launcher).__name__],
                sys.argv[1:],
                os.getcwd(),
            )
            record.trials, record.detach = sweeper.n_trials, bool(sweeper.detach)
            record.save()
        left = sweeper.n_trials - worker.ended(study.get_trials(deepcopy=False))
        slots = max(min(sweeper.n_jobs, -(-left // plan.pack)) - earlier, 0) if left > 0 else 0
        if earlier:
            print(
                f"fmsweep: {earlier} worker{'s' * (earlier > 1)} of an earlier launch still queued or running, "
                f"of hydra.sweeper.n_jobs={sweeper.n_jobs}"
            )
        if type(launcher).__name__ == "BasicLauncher" and slots > 1:
            print(
                f"fmsweep: the basic launcher runs one trial at a time (hydra.sweeper.n_jobs={sweeper.n_jobs} needs "
                f"hydra/launcher=submitit_local or slurm)"
            )
            slots = 1
        if slots:
            together = f", each training up to {plan.pack} trials together (pack={plan.pack})" if plan.pack > 1 else ""
            print(f"fmsweep: {slots} worker{'s' * (slots > 1)} for {left} trial{'s' * (left > 1)}{together}")
        try:
            error = launch.launch_workers(
                launcher, record, [worker.Worker(launcher, plan) for _ in range(slots)], bool(sweeper.detach)
            )
        except UserError as exc:
            exit_with(exc)
        if sweeper.detach:
            return
        study = plan.study()
        print_best(study, sweeper.objective)
        unfinished = sweeper.n_trials - worker.ended(study.get_trials(deepcopy=False))
        if unfinished > 0:
            print(
                f"fmsweep: {unfinished} of the {sweeper.n_trials} trials did not end; continue the search with: "
                f"fmsweep resume {sweep_dir}",
                file=sys.stderr,
            )
        report(sweep_dir, error)


def print_best(study: Any, objective: str) -> None:
    """The search's counts of trials by how they ended, and its best trial."""
    from optuna.trial import TrialState

    counts = {
        state.name.lower(): sum(t.state == state for t in study.trials)
        for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    print(f"fmsweep: search of {len(study.trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if counts["complete"]:
        best = study.best_trial
        value = f"{100 * best.value:.2f} %" if objective.endswith("acc") else f"{best.value:.4f}"
        print(
            f"fmsweep: best trial {best.number}: {objective} {value} with "
            + " ".join(f"{k}={readable(v)}" for k, v in best.params.items())
        )
