"""The closing summary of a sweep: its results (report, best setting on validation, ensemble), which jobs failed, were
cancelled or did not finish (a job a search pruned did finish), and where their logs are."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from fmsweep.errors import UserError
from fmsweep.results.runs import find_runs
from fmsweep.sweep import packing


def job_logs(sweep_dir: Path, job_dir: Path) -> list[Path]:
    """The logs of a job: its run log (its pack's, when it trained in one) and, under a submitit launcher, the
    stdout/stderr files of the launcher job that ran it."""
    job_id = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra.job.id
    pack_dir = packing.pack_of(sweep_dir, job_dir)
    logs = sorted((pack_dir or job_dir).glob("*.log"))
    return logs + sorted((sweep_dir / ".submitit" / str(job_id)).glob("*_log.*"))


def write_results(sweep_dir: Path) -> None:
    """Write the sweep's results (fmsweep.results.finish) and print what was written: the best setting, the report,
    the ensemble. What could not be written is a line each on stderr: the sweep's own outcome, printed next,
    matters more."""
    from fmsweep.results.finish import results

    written, missing = results(sweep_dir)
    for line in missing:
        print(f"fmsweep: {line}", file=sys.stderr)
    for line in written:
        print(f"fmsweep: {line}")


def report(sweep_dir: Path, error: Exception | None) -> None:
    """Write the sweep's report and name its best setting; print which jobs of the sweep did not complete, each as
    `<job>: <status>: <error>` (`cancelled: cancelled by SIGTERM ...` for a cancelled one) with its log paths; exit 1
    if any."""
    try:
        problems = [run for run in find_runs(sweep_dir) if not run.completed and run.metrics.get("status") != "pruned"]
    except UserError:  # not one job got as far as its directory
        problems = []
    else:
        write_results(sweep_dir)
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
