"""The closing summary of a sweep: its report (fmsweep.report) and best setting on validation, which jobs failed or
did not finish (a job a search pruned did finish), and where their logs are."""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from fmsweep.sweep import packing
from fmsweep.errors import UserError
from fmsweep.runs import find_runs


def job_logs(sweep_dir: Path, job_dir: Path) -> list[Path]:
    """The logs of a job: its run log (its pack's, when it trained in one) and, under a submitit launcher, the
    stdout/stderr files of the launcher job that ran it."""
    job_id = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra.job.id
    pack_dir = packing.pack_of(sweep_dir, job_dir)
    logs = sorted((pack_dir or job_dir).glob("*.log"))
    return logs + sorted((sweep_dir / ".submitit" / str(job_id)).glob("*_log.*"))


def write_report(sweep_dir: Path) -> None:
    """Write the sweep's report and print its best setting and where the report is. A report that cannot be
    written is one line: the sweep's own outcome, printed next, matters more."""
    from fmsweep import report as sweep_report

    try:
        _, written, best = sweep_report.write_report(sweep_dir)
    except Exception as exc:  # noqa: BLE001 (any failure of the report is reported, none ends the sweep's summary)
        print(f"fmsweep: the report of {sweep_dir} could not be written ({type(exc).__name__}: {exc}); "
              f"try: python -m fmsweep.report {sweep_dir}", file=sys.stderr)
        return
    print(f"fmsweep: {best}\nfmsweep: report: {written[0]} (with {', '.join(p.name for p in written[1:])})")


def report(sweep_dir: Path, error: Exception | None) -> None:
    """Write the sweep's report and name its best setting; print which jobs of the sweep did not complete, with
    their error and log paths; exit 1 if any."""
    try:
        problems = [run for run in find_runs(sweep_dir) if not run.completed and run.metrics.get("status") != "pruned"]
    except UserError:  # not one job got as far as its directory
        problems = []
    else:
        write_report(sweep_dir)
    if not problems and error is None:
        print(f"fmsweep: all jobs of {sweep_dir} completed")
        return
    print(f"fmsweep: {len(problems)} job(s) of {sweep_dir} did not complete:", file=sys.stderr)
    for run in problems:
        print(f"  {run.name}: {run.status}: {run.metrics.get('error', '')}", file=sys.stderr)
        for log in job_logs(sweep_dir, run.path):
            print(f"      log: {log}", file=sys.stderr)
    if error is not None and not problems:
        print(f"  sweep error: {type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(1)
