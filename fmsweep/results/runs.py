"""Runs on disk: finding the job dirs of a sweep, reading each one's settings, status and history; and
the markdown tables and command-line parsing that the sweep tools (ensemble, report) share.

The readers of a run's own files, metrics.json (`read_metrics`) and history.csv (`read_history`), are the only ones:
the report, the ensemble and `fmsweep status` all read through them. Importing this module loads neither torch,
OmegaConf nor YAML (those load where a run's settings are read): `fmsweep status` imports it and answers at once."""

from __future__ import annotations

import contextlib
import csv
import json
import shlex
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard, cast

from fmsweep.errors import UserError, first_line

if TYPE_CHECKING:
    from omegaconf import DictConfig

HYDRA_DIR = ".hydra"
METRICS, HISTORY = "metrics.json", "history.csv"
SEED_KEY = "seed"
# The config keys the sweep tools read from a run's .hydra/config.yaml.
CONFIG_KEYS = ("seed", "epochs", "model._target_", "data.root", "data.download", "data.valid_ratio", "data.subset")
# metrics.json's statuses (tracking.Tracker.final, tracking.record_failure, tracking.record_cancelled: a sweep job
# stopped by a cancel, resumable); a finished run's metrics.json (completed, or pruned by a search) holds these numbers
# too (train.RunState.finish).
STATUSES = ("completed", "pruned", "failed", "cancelled")
FINAL_METRICS = (
    "best_epoch",
    "valid_loss",
    "valid_acc",
    "test_loss",
    "test_acc",
    "num_params",
    "train_seconds",
    "epochs_run",
)


class NotARun(Exception):
    """A dir with a .hydra/config.yaml that is no complete fmsweep run dir; the message says what is wrong."""


def override_key(override: str) -> str:
    """The key (or config group) of a Hydra override, as Hydra's `key_or_group`: `+reg.l2=1` -> `reg.l2`,
    `model@net=fc` -> `model`."""
    return override.partition("=")[0].lstrip("+~").partition("@")[0]


def read_overrides(run_dir: Path) -> list[str]:
    """The job's overrides as its job dir name has them: Hydra's recorded overrides minus the keys left out of
    the name (data.root, ...), sorted as Hydra sorts `hydra.job.override_dirname`, whatever the command line's
    order; so the report, the ensemble and TensorBoard list them in one order."""
    from omegaconf import OmegaConf

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
    from omegaconf import OmegaConf

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
        """history.csv as rows of floats (epoch included); [] when absent (read_history)."""
        return read_history(self.path)

    @property
    def status(self) -> str:
        """metrics.json's status (completed, failed, cancelled, ...); else how far the run got."""
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


@contextlib.contextmanager
def reading(file: str) -> Iterator[None]:
    """Turn a failure to read or parse `file` of a run dir into NotARun naming it."""
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except (OSError, ValueError, TypeError, yaml.YAMLError, OmegaConfBaseException) as exc:
        raise NotARun(f"invalid {file} ({first_line(exc)})") from None


def mapping(loaded: Any) -> DictConfig:
    """`loaded` when it is a mapping (what Hydra writes into .hydra/), else a TypeError for `reading`."""
    from omegaconf import DictConfig

    if not isinstance(loaded, DictConfig):
        raise TypeError(f"a {type(loaded).__name__}, not a mapping")
    return loaded


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_metrics(run_dir: Path, strict: bool = False) -> dict[str, Any]:
    """metrics.json of a run, {} while it has none (a run still training). Tolerant, for `fmsweep status`, which
    must show a status whatever it finds: a file half written, unreadable or not a JSON object is {} too. `strict`,
    for the report: NotARun for anything but what a run writes (a status of STATUSES, and a finished run's
    FINAL_METRICS as numbers)."""
    try:
        metrics = json.loads((run_dir / METRICS).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        if not strict:
            return {}

        raise NotARun(f"metrics.json is not JSON ({first_line(exc)})") from None
    if not strict:
        return metrics if isinstance(metrics, dict) else {}
    status = metrics.get("status") if isinstance(metrics, dict) else None
    if status not in STATUSES:
        raise NotARun(f"metrics.json holds no status {'/'.join(STATUSES)}")
    missing = [key for key in FINAL_METRICS if not is_number(metrics.get(key))]
    if status in ("completed", "pruned") and missing:
        raise NotARun(f"metrics.json of a {status} run lacks the number(s) {', '.join(missing)}")
    return metrics


def read_run_metrics(path: Path) -> dict[str, Any]:
    """metrics.json as a run writes it, {} while it has none (a run still training); NotARun for anything else."""
    return read_metrics(path, strict=True)


def read_history(run_dir: Path) -> list[dict[str, float]]:
    """history.csv of a run as rows of floats, one per epoch (its epoch included); [] while it has none. A file that
    is no table of numbers (garbled, cut short by a copy) is a ValueError, one that cannot be read an OSError."""
    try:
        with open(run_dir / HISTORY, newline="") as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except FileNotFoundError:
        return []
    except (TypeError, csv.Error) as exc:  # a short row's missing cells are None, a long row's extra a list
        raise ValueError(f"{HISTORY} is no table of numbers ({exc})") from None


def read_objective(run_dir: Path) -> str | None:
    """The objective of the search that trained the run (hydra.sweeper.objective in its .hydra/hydra.yaml:
    valid_loss or valid_acc); None for a run of no search, or a file that cannot be read. Plain YAML, not OmegaConf:
    `fmsweep status` asks it once per look."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where PyYAML has it: ten times faster
    try:
        text = (run_dir / HYDRA_DIR / "hydra.yaml").read_text()
        objective = yaml.load(text, Loader=loader)["hydra"]["sweeper"].get("objective")
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    return objective if isinstance(objective, str) else None


def read_run(path: Path, name: str) -> Run:
    """Read a run dir's settings (.hydra/) and metrics; NotARun when they are not those of an fmsweep run."""
    from omegaconf import OmegaConf

    hydra_yaml = path / HYDRA_DIR / "hydra.yaml"
    with reading(f"{HYDRA_DIR}/hydra.yaml"):
        hydra_cfg = mapping(OmegaConf.load(hydra_yaml)) if hydra_yaml.is_file() else OmegaConf.create()
        num = OmegaConf.select(hydra_cfg, "hydra.job.num", default=None)
        num = None if num is None else int(num)
        choices = mapping(OmegaConf.select(hydra_cfg, "hydra.runtime.choices", default=OmegaConf.create()))
    with reading(f"{HYDRA_DIR}/config.yaml"):
        config = mapping(OmegaConf.load(path / HYDRA_DIR / "config.yaml"))
        absent = object()
        missing = [
            key
            for key in CONFIG_KEYS
            if OmegaConf.select(config, key, default=absent, throw_on_resolution_failure=False) is absent
        ]
    if missing:
        raise NotARun(f"{HYDRA_DIR}/config.yaml is not an fmsweep run's: it lacks {', '.join(missing)}")
    with reading(f"{HYDRA_DIR}/overrides.yaml"):
        overrides = read_overrides(path)
    return Run(
        path=path,
        name=name,
        num=num,
        overrides=overrides,
        config=config,
        choices=cast(dict[str, Any], OmegaConf.to_container(choices)),
        metrics=read_run_metrics(path),
    )


def find_runs(path: str | Path) -> list[Run]:
    """The run at `path`, or every run below it (a sweep dir, or a folder of sweeps), in job order. A dir that is
    not a complete run (see read_run) is skipped with one line on stderr: the others are still worth a report."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory (expected an fmsweep sweep or run directory)")
    dirs = [root] if is_run(root) else sorted({p.parent.parent for p in root.rglob(f"{HYDRA_DIR}/config.yaml")})
    if not dirs:
        raise UserError(f"{root} is not an fmsweep sweep or run directory: no {HYDRA_DIR}/config.yaml in it or below")
    runs = []
    for d in dirs:
        try:
            runs.append(read_run(d, str(d.relative_to(root))))
        except NotARun as exc:
            print(f"skipped {d}: {exc}", file=sys.stderr)
    if not runs:
        raise UserError(
            f"{root} is not an fmsweep sweep or run directory: none of the {len(dirs)} dir(s) with a "
            f"{HYDRA_DIR}/config.yaml in it or below is a complete run (skipped, see above)"
        )
    return sorted(runs, key=lambda r: (str(r.path.parent), r.num if r.num is not None else -1, r.name))


def markdown_table(header: list[str], rows: list[list[str]], right: Collection[int] = ()) -> str:
    """A markdown table padded to aligned columns; columns whose index is in `right` are right-aligned."""
    widths = [max(3, *(len(str(c)) for c in col)) for col in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )
            + " |"
        )

    rule = "| " + " | ".join("-" * (w - 1) + ":" if i in right else "-" * w for i, w in enumerate(widths)) + " |"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
