"""`hydra/sweeper=optuna`: an Optuna search (ask and tell) whose trials are fmsweep jobs of any launcher, packed as
`pack` says, checked before launch, shown in the live status and summed up at the end like a grid sweep's
(fmsweep.sweep.search holds the study's side). Hydra accepts sweepers only from the hydra_plugins package."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper


class SearchSweeper(Sweeper):
    """Runs `n_trials` trials, `n_jobs` at a time: each batch asks the study for parameters, launches the trials as
    jobs, and tells the study each one's `objective` (valid_loss, minimized, or valid_acc, maximized), or that it
    was pruned or failed. The study is continued where the sweep dir already holds one: finished trials count, trials
    a killed search left running are launched again (they resume from their last.pt)."""

    def __init__(self, n_trials: int, n_jobs: int, objective: str, seed: int, pruner: str) -> None:
        self.n_trials, self.n_jobs, self.objective, self.seed, self.pruner = n_trials, n_jobs, objective, seed, pruner
        self.config: Any = None
        self.launcher: Any = None
        self.hydra_context: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def check_settings(self) -> None:
        from fmsweep.sweep import search
        from fmsweep.errors import UserError

        for name, value, ok in (("n_trials", self.n_trials, isinstance(self.n_trials, int) and self.n_trials >= 1),
                                ("n_jobs", self.n_jobs, isinstance(self.n_jobs, int) and self.n_jobs >= 1),
                                ("objective", self.objective, self.objective in search.OBJECTIVES),
                                ("pruner", self.pruner, self.pruner in search.PRUNERS),
                                ("seed", self.seed, isinstance(self.seed, int))):
            if not ok:
                expected = {"objective": ", ".join(search.OBJECTIVES), "pruner": ", ".join(search.PRUNERS)}.get(
                    name, "an integer >= 1" if name != "seed" else "an integer")
                raise UserError(f"hydra.sweeper.{name} must be {expected}, got {value!r}")

    def sweep(self, arguments: list[str]) -> Any:
        import optuna
        from optuna.trial import TrialState

        from fmsweep import tracking
        from fmsweep.sweep import prelaunch, search
        from fmsweep.errors import UserError, exit_with
        from fmsweep.sweep.summary import report
        from hydra_plugins.fmsweep_sweeper.reporting_sweeper import is_slurm, launch

        loader = self.hydra_context.config_loader
        sweep_dir = Path(self.config.hydra.sweep.dir)
        try:
            self.check_settings()
            fixed, space = search.split(arguments)
            # the space's corners, checked before the study exists: a bad key or value of the space is one line
            corners = prelaunch.check_jobs(loader, self.config, _corners(fixed, space))
            if is_slurm(self.launcher):
                prelaunch.check_slurm_request(self.launcher.params)
        except UserError as exc:
            exit_with(exc)
        if self.pruner == "halving" and min(int(c.epochs) for c in corners) < search.Halving.RATE:
            print(f"fmsweep: note: pruner=halving stops trials at epochs 1, 3, 9, ... up to a third of their run: "
                  f"trials of fewer than {search.Halving.RATE} epochs are never pruned")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name=search.STUDY, storage=search.storage(sweep_dir), load_if_exists=True,
            direction=search.OBJECTIVES[self.objective], sampler=optuna.samplers.TPESampler(seed=self.seed))
        # the trials prune themselves, from inside their jobs (fmsweep.sweep.search.Trial), with the pruner named here
        study.set_user_attr("objective", self.objective)
        study.set_user_attr("pruner", self.pruner)
        returns, error = [], None
        while True:
            trials = study.get_trials(deepcopy=False)
            ended = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials)
            left_running = [t.number for t in trials if t.state == TrialState.RUNNING]
            if ended >= self.n_trials and not left_running:
                break
            # trials a killed search left running go first, as one batch of theirs: they resume in their job dirs
            numbers = left_running[: self.n_jobs] or [study.ask(space).number
                                                       for _ in range(min(self.n_jobs, self.n_trials - ended))]
            for run in _consecutive(numbers):
                params = [study.trials[n].params for n in run]
                overrides = [[*fixed, *(f"{k}={search.override_value(v)}" for k, v in p.items())] for p in params]
                try:
                    configs = prelaunch.check_jobs(loader, self.config, overrides, first_num=run[0])
                except UserError as exc:
                    for n in run:
                        study.tell(n, state=TrialState.FAIL)
                    exit_with(exc)
                results, failure = launch(self.launcher, self.config, overrides, configs,
                                          others=_others(study, run, self.n_trials))
                returns.append(results)
                error = error or failure
                for n, cfg in zip(run, configs):
                    metrics = tracking.read_metrics(sweep_dir / str(cfg.hydra.sweep.subdir)) or {}
                    if metrics.get("status") == "completed":
                        study.tell(n, metrics[self.objective])
                    else:
                        study.tell(n, state=TrialState.PRUNED if metrics.get("status") == "pruned" else TrialState.FAIL)
        _print_best(study, self.objective)
        report(sweep_dir, error)
        return returns


def _corners(fixed: list[str], space: dict[str, Any]) -> list[list[str]]:
    """Trial overrides to check a search space with: every key at its low end, then at its high end, then each
    choice of each category (the other keys low)."""
    from fmsweep.sweep.search import override_value

    def ends(pick: int) -> dict[str, Any]:
        return {k: d.choices[pick] if hasattr(d, "choices") else (d.low, d.high)[pick] for k, d in space.items()}

    trials = [ends(0), ends(-1)]
    trials += [{**ends(0), key: choice} for key, d in space.items() for choice in getattr(d, "choices", ())]
    return [[*fixed, *(f"{k}={override_value(v)}" for k, v in trial.items())] for trial in trials]


def _others(study: Any, launching: list[int], n_trials: int) -> list[str]:
    """The live-status states of the search's trials other than those `launching`, so that its counts cover the
    whole search: an ended trial as it ended; one left running for a later launch, or not asked yet, pending."""
    from optuna.trial import TrialState

    ended = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    trials = study.get_trials(deepcopy=False)
    states = [ended.get(t.state, "pending") for t in trials if t.number not in launching]
    return states + ["pending"] * max(n_trials - len(trials), 0)


def _consecutive(numbers: list[int]) -> list[list[int]]:
    """`numbers` in runs of consecutive numbers: the launchers number the jobs of one launch consecutively."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return runs


def _print_best(study: Any, objective: str) -> None:
    from optuna.trial import TrialState

    counts = {state.name.lower(): sum(t.state == state for t in study.trials)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    print(f"fmsweep: search of {len(study.trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if counts["complete"]:
        best = study.best_trial
        print(f"fmsweep: best trial {best.number}: {objective} {best.value:.4f} with "
              + " ".join(f"{k}={v}" for k, v in best.params.items()))
