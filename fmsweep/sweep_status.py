"""The jobs of a sweep directory, and the closing summary of a sweep: which jobs failed or did not finish,
and where their logs are."""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from fmsweep import tracking


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep (those holding Hydra's .hydra/hydra.yaml), by job number."""
    dirs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/hydra.yaml")]
    return sorted(dirs, key=lambda d: OmegaConf.load(d / ".hydra" / "hydra.yaml").hydra.job.num)


def job_logs(sweep_dir: Path, job_dir: Path) -> list[Path]:
    """The logs of a job: its run log and, under a submitit launcher, the job's stdout/stderr files."""
    job_id = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra.job.id
    return sorted(job_dir.glob("*.log")) + sorted((sweep_dir / ".submitit" / str(job_id)).glob("*_log.*"))


def report(sweep_dir: Path, error: Exception | None) -> None:
    """Print which jobs of the sweep did not complete, with their error and log paths; exit 1 if any."""
    problems = []
    for job_dir in job_dirs(sweep_dir):
        metrics = tracking.read_metrics(job_dir) or {"status": "unfinished"}
        if metrics["status"] != "completed":
            problems.append((job_dir, metrics))
    if not problems and error is None:
        print(f"fmsweep: all jobs of {sweep_dir} completed")
        return
    print(f"fmsweep: {len(problems)} job(s) of {sweep_dir} did not complete:", file=sys.stderr)
    for job_dir, metrics in problems:
        print(f"  {job_dir.name}: {metrics['status']}: {metrics.get('error', '')}", file=sys.stderr)
        for log in job_logs(sweep_dir, job_dir):
            print(f"      log: {log}", file=sys.stderr)
    if error is not None and not problems:
        print(f"  sweep error: {type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(1)
