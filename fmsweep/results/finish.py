"""The results of a sweep that ended: its report (fmsweep.results.report: md, csv, png) and, where seeds repeat its best
setting, the ensemble of that setting's models (fmsweep.results.ensemble). Written by the launching command of an
attached sweep, and for a detached one by a small SLURM job that starts once the sweep's jobs ended."""

from __future__ import annotations

import json
from pathlib import Path

from fmsweep.errors import UserError


def write_ensemble(sweep_dir: Path) -> str | None:
    """Write ensemble.json for the completed jobs of the best setting on validation when it has two or more (seeds
    repeat it); return the line naming it and its test accuracy, None when no setting repeats."""
    from fmsweep.results import ensemble, report
    from fmsweep.results.runs import find_runs

    runs = find_runs(sweep_dir)
    stats = report.setting_stats(runs)
    objective, minimize = report.objective_of(sweep_dir)
    order = report.ranked(stats, objective, minimize)
    if not order or stats[order[0]]["n"] < 2:
        return None
    members = [str(run.path) for run in runs if run.setting == order[0] and run.completed]
    out = sweep_dir / ensemble.OUT_NAME
    ensemble.run(ensemble.parse_args([*members, "--out", str(out)]))
    average = json.loads(out.read_text())["average"]
    return f"ensemble of the best setting's {len(members)} jobs: test acc {100 * average['acc']:.2f} %: {out}"


def results(sweep_dir: Path) -> tuple[list[str], list[str]]:
    """Write the report and the ensemble, each on its own; return the lines that name what was written (the best
    setting, the files) and those that say what could not be, and why."""
    from fmsweep.results import report

    written, missing = [], []
    try:
        _, files, best = report.write_report(sweep_dir)
        written += [best, f"report: {files[0]} (with {', '.join(p.name for p in files[1:])})"]
    except Exception as exc:  # noqa: BLE001 (a report that cannot be written is one line; the rest goes on)
        missing.append(
            f"the report of {sweep_dir} could not be written ({type(exc).__name__}: {exc}); "
            f"try: fmsweep report {sweep_dir}"
        )
    try:
        made = write_ensemble(sweep_dir)
    except UserError as exc:
        missing.append(f"no ensemble of the best setting: {exc}")
    except Exception as exc:  # noqa: BLE001 (as above)
        missing.append(
            f"the ensemble could not be written ({type(exc).__name__}: {exc}); try: fmsweep ensemble {sweep_dir}"
        )
    else:
        written += [made] if made else []
    return written, missing


def finish(sweep_dir: str) -> None:
    """The job that ends a detached sweep: write its results and print what was written (into its SLURM log)."""
    written, missing = results(Path(sweep_dir))
    for line in [*missing, *written]:
        print(f"fmsweep: {line}")
