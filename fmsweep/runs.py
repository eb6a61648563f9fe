"""Runs on disk: finding the job dirs of a sweep, reading each one's settings, status and history; and
the markdown tables and command-line parsing that the sweep tools (ensemble, report) share."""
from __future__ import annotations

import argparse
import csv
import shlex
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf

from fmsweep.errors import UserError
from fmsweep.tracking import read_metrics

HYDRA_DIR = ".hydra"
SEED_KEY = "seed"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is a UserError (one line on stderr, exit 2) like any other."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}")


def override_key(override: str) -> str:
    """The key (or config group) of a Hydra override, as Hydra's `key_or_group`: `+reg.l2=1` -> `reg.l2`,
    `model@net=fc` -> `model`."""
    return override.partition("=")[0].lstrip("+~").partition("@")[0]


def read_overrides(run_dir: Path) -> list[str]:
    """The job's overrides as its job dir name has them: Hydra's recorded overrides minus the keys left out of
    the name (data.root, ...), sorted as Hydra sorts `hydra.job.override_dirname`, whatever the command line's
    order; so the report, the ensemble and TensorBoard list them in one order."""
    hydra_dir = run_dir / HYDRA_DIR
    if not (hydra_dir / "overrides.yaml").is_file():
        return []
    overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
    excluded: set[str] = set()
    if (hydra_dir / "hydra.yaml").is_file():
        hydra_cfg = OmegaConf.load(hydra_dir / "hydra.yaml")
        excluded = set(OmegaConf.select(hydra_cfg, "hydra.job.config.override_dirname.exclude_keys", default=[]))
    return sorted(o for o in overrides if override_key(o) not in excluded)


def command(run_dir: Path) -> str:
    """The command that trains the run in `run_dir` again: `python -m fmsweep` with the job's own overrides as Hydra
    recorded them (for a sweep job or a pack member, not the sweep's command line); the process's own arguments
    where Hydra recorded none."""
    recorded = run_dir / HYDRA_DIR / "overrides.yaml"
    arguments = [str(o) for o in OmegaConf.load(recorded)] if recorded.is_file() else sys.argv[1:]
    return "python -m fmsweep " + shlex.join(arguments)


@dataclass
class Run:
    """One job dir of a sweep (or a single run dir) as found on disk."""

    path: Path
    name: str  # path relative to the folder searched ('.' when that folder is the run)
    num: int | None  # Hydra's job number in its sweep
    overrides: list[str]
    config: DictConfig
    choices: dict[str, Any]  # config group -> chosen option, e.g. model -> fc
    metrics: dict[str, Any]  # metrics.json, {} while there is none

    @property
    def completed(self) -> bool:
        return self.metrics.get("status") == "completed"

    @property
    def setting(self) -> str:
        """The job's overrides without its seed: jobs of one setting differ only by seed."""
        return ",".join(o for o in self.overrides if override_key(o) != SEED_KEY) or "(defaults)"

    def history(self) -> list[dict[str, float]]:
        """history.csv as rows of floats (epoch included); [] when absent."""
        try:
            with open(self.path / "history.csv", newline="") as f:
                return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
        except FileNotFoundError:
            return []

    @property
    def status(self) -> str:
        """metrics.json's status (completed, failed, ...); else how far the run got."""
        if self.metrics.get("stopped_early") is not None:
            return f"{self.metrics['status']} (early stop at epoch {self.metrics['stopped_early']})"
        if self.metrics.get("pruned") is not None:
            return f"pruned at epoch {self.metrics['pruned']}"
        if "status" in self.metrics:
            return str(self.metrics["status"])
        done = len(self.history())
        return f"unfinished ({done}/{self.config.epochs} epochs)" if done else "no epoch finished"


def is_run(path: Path) -> bool:
    return (path / HYDRA_DIR / "config.yaml").is_file()


def read_run(path: Path, name: str) -> Run:
    """Read a run dir's settings (.hydra/) and metrics."""
    hydra_yaml = path / HYDRA_DIR / "hydra.yaml"
    hydra_cfg = OmegaConf.load(hydra_yaml) if hydra_yaml.is_file() else OmegaConf.create()
    num = OmegaConf.select(hydra_cfg, "hydra.job.num", default=None)
    choices = OmegaConf.select(hydra_cfg, "hydra.runtime.choices", default=None)
    return Run(
        path=path,
        name=name,
        num=None if num is None else int(num),
        overrides=read_overrides(path),
        config=OmegaConf.load(path / HYDRA_DIR / "config.yaml"),
        choices=OmegaConf.to_container(choices) if choices is not None else {},
        metrics=read_metrics(path) or {},
    )


def find_runs(path: str | Path) -> list[Run]:
    """The run at `path`, or every run below it (a sweep dir, or a folder of sweeps), in job order."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory (expected an fmsweep sweep or run directory)")
    if is_run(root):
        return [read_run(root, ".")]
    dirs = sorted({p.parent.parent for p in root.rglob(f"{HYDRA_DIR}/config.yaml")})
    if not dirs:
        raise UserError(f"{root} is not an fmsweep sweep or run directory: no {HYDRA_DIR}/config.yaml in it or below")
    runs = [read_run(d, str(d.relative_to(root))) for d in dirs]
    return sorted(runs, key=lambda r: (str(r.path.parent), r.num if r.num is not None else -1, r.name))


def markdown_table(header: list[str], rows: list[list[str]], right: Collection[int] = ()) -> str:
    """A markdown table padded to aligned columns; columns whose index is in `right` are right-aligned."""
    widths = [max(3, *(len(str(c)) for c in col)) for col in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + ":" if i in right else "-" * w for i, w in enumerate(widths)) + " |"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
