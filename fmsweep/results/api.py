"""`fmsweep.load_sweep(DIR)`: a sweep's results in Python, as pandas DataFrames, for a notebook or slides.

One row per job (its swept values typed, status, final metrics, absolute path), per job and epoch (history.csv),
per setting (jobs that differ only by seed: mean and std of each metric, rank on validation), a search's trials,
and the best run on validation with its model. It reads the job dirs as the report does (fmsweep.results.runs)
and ranks as the report ranks (fmsweep.results.report): the two never disagree."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from fmsweep.errors import UserError
from fmsweep.results import report
from fmsweep.results.runs import FINAL_METRICS, Run, find_runs
from fmsweep.sweep.storage import find_study

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from fmsweep.models import Classifier


def typed(run: Run, key: str) -> Any:
    """The value `key` has in `run`, typed as the config holds it: a config group's chosen option (`reg` -> 'l2'),
    else the config value (`optimizer.lr` -> 0.001); None where the run has no such key."""
    if key in run.choices:
        return run.choices[key]
    value = OmegaConf.select(run.config, key, default=None, throw_on_resolution_failure=False)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


@dataclass(frozen=True)
class Best:
    """The best run of a sweep on validation: the best job of the best setting, by the sweep's objective."""

    job: str
    path: Path
    setting: str
    objective: str
    value: float
    metrics: dict[str, Any] = field(repr=False)
    statement: str = field(repr=False)

    def load_model(self, device: str | torch.device = "cpu") -> Classifier:
        """The run's best model, ready to predict (fmsweep.load_model)."""
        from fmsweep.checkpoint import load_model

        return load_model(self.path, device)

    def __str__(self) -> str:
        return self.statement


class Sweep:
    """A sweep's results: settings and final metrics read from its job dirs when loaded (load the sweep again to see
    newer ones); history.csv and a search's study read each time `history` or `trials` is asked."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self.runs = find_runs(self.path)
        self.objective, self.minimize = report.objective_of(self.path)
        self.keys = report.swept_keys(self.runs, seed=True)
        self._stats = report.setting_stats(self.runs)
        self._order = report.ranked(self._stats, self.objective, self.minimize)

    def __repr__(self) -> str:
        return (
            f"<Sweep {self.path}: {len(self.runs)} jobs, {len(self._stats)} settings, ranked by "
            f"{self.objective} ({'lower' if self.minimize else 'higher'} is better)>"
        )

    def _swept(self, run: Run, seed: bool = True) -> dict[str, Any]:
        return {key: typed(run, key) for key in self.keys if seed or key != report.SEED_KEY}

    @property
    def jobs(self) -> pd.DataFrame:
        """One row per job, in job order: job, a column per swept key (typed), setting, status, the final metrics
        (NaN where a job has none yet), path (absolute)."""
        import pandas as pd

        rows = [
            {
                "job": report.job_id(run),
                **self._swept(run),
                "setting": run.setting,
                "status": run.status,
                **{key: run.metrics.get(key, math.nan) for key in FINAL_METRICS},
                "path": str(run.path),
            }
            for run in self.runs
        ]
        return pd.DataFrame(rows)

    @property
    def history(self) -> pd.DataFrame:
        """history.csv of every job in long format: job, a column per swept key, setting, then one row per epoch
        with every column of history.csv (epoch, train_loss, train_acc, valid_loss, valid_acc, lr,
        epoch_seconds)."""
        import pandas as pd

        rows = [
            {"job": report.job_id(run), **self._swept(run), "setting": run.setting, **row}
            for run in self.runs
            for row in run.history()
        ]
        frame = pd.DataFrame(rows)
        if "epoch" in frame:
            frame["epoch"] = frame["epoch"].astype(int)
        return frame

    @property
    def settings(self) -> pd.DataFrame:
        """One row per setting, best first: rank (NaN without a completed job), a column per swept key but the
        seed, setting, jobs, n (completed jobs), and each metric's mean and sample std over them."""
        import pandas as pd

        first = {run.setting: run for run in reversed(self.runs)}
        rows = report.setting_rows(self.runs, self._stats, self._order)
        for row in rows:
            row.update(self._swept(first[row["setting"]], seed=False))
        return pd.DataFrame(rows).replace("", math.nan).infer_objects()

    @property
    def trials(self) -> pd.DataFrame | None:
        """A search's trials (Optuna's trials_dataframe: number, value, params_*, state, ...); None for a grid."""
        study = find_study(self.path)
        return None if study is None else study.trials_dataframe()

    def best(self) -> Best:
        """The best run on validation: the best setting by the mean objective over its completed jobs, and its
        best job by the same objective. Its statement names the setting's margin over the next (in standard
        errors where seeds repeat both) or the settings it ties with."""
        if not self._order or self._stats[self._order[0]][self.objective] is None:
            raise UserError(f"{self.path}: no completed job yet, so no best run")
        setting = self._order[0]
        sign = 1 if self.minimize else -1
        run = min(
            (r for r in self.runs if r.setting == setting and r.completed),
            key=lambda r: sign * float(r.metrics[self.objective]),
        )
        mean = self._stats[setting][self.objective][0]
        ties = [
            s
            for s in self._order[1:]
            if self._stats[s][self.objective] is not None and self._stats[s][self.objective][0] == mean
        ]
        shared = report.shared_overrides(self.runs)
        labels = {r.setting: report.label(r, shared) for r in self.runs}
        name, unit = self.objective.replace("_", " "), " %" if self.objective.endswith("acc") else ""
        statement = (
            f"job {report.job_id(run)} ({','.join(run.overrides) or 'defaults'}): {name} "
            f"{report.metric_text(self.objective, float(run.metrics[self.objective]))}{unit}, the best of "
            f"its setting {labels[setting]} (mean {report.metric_text(self.objective, mean)}{unit} over "
            f"{self._stats[setting]['n']} completed jobs)"
        )
        if ties:
            statement += (
                f"; tied on the mean with {', '.join(labels[s] for s in ties)}: the first in job order is taken"
            )
        elif len(self._order) > 1:
            ahead = report.margin(self._stats, self._order, self.objective)
            statement += f", ahead of the next setting ({labels[self._order[1]]}) by {ahead}" if ahead else ""
        return Best(
            job=report.job_id(run),
            path=run.path,
            setting=setting,
            objective=self.objective,
            value=float(run.metrics[self.objective]),
            metrics=dict(run.metrics),
            statement=statement,
        )


def load_sweep(path: str | Path) -> Sweep:
    """The results of the sweep in `path` (a sweep dir, a folder of sweeps, or one run dir); a UserError (one
    line) when it holds no fmsweep run."""
    return Sweep(Path(path))
