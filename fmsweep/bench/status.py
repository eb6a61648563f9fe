"""`python -m fmsweep.bench.status [--jobs N] [--repeat R]`: how long `fmsweep status` takes to read a large sweep
and make its table, in this process: a fake sweep of N jobs (by default 1,000: half completed, a tenth running with a
history and their run-dir locks held, a tenth failed, a tenth stopped, the rest pending) is made in a temporary
dir; the median of R timed `read` + table, after one untimed one, is printed. SLURM is not asked (a basic sweep):
its squeue and sacct calls come on top."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from fmsweep.sweep import lock, status
from fmsweep.sweep.manifest import JobRecord, Manifest

HISTORY_HEADER = "epoch,train_loss,train_acc,valid_loss,valid_acc,lr,epoch_seconds\n"
EPOCHS = 20


def make_sweep(sweep_dir: Path, n_jobs: int, held: contextlib.ExitStack) -> Manifest:
    """A recorded sweep of `n_jobs` jobs and their dirs as real runs leave them (`held` holds the running ones'
    locks)."""
    jobs = [
        JobRecord(
            num=i,
            name=f"{i}_model=fc,optimizer.lr={i / 1000},seed={i % 3}",
            overrides=["model=fc", f"optimizer.lr={i / 1000}", f"seed={i % 3}"],
            epochs=EPOCHS,
        )
        for i in range(n_jobs)
    ]
    manifest = Manifest(
        sweep_dir=sweep_dir, kind="grid", launcher="basic", command=["-m", "..."], cwd=str(sweep_dir), jobs=jobs
    )
    manifest.save()
    for job in jobs:
        kind = job.num % 10  # 0-4 completed, 5 running, 6 failed, 7 stopped, 8-9 pending
        if kind >= 8:
            continue
        run_dir = sweep_dir / job.name
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text(f"epochs: {EPOCHS}\n")
        epochs = EPOCHS if kind < 5 else 7
        (run_dir / "history.csv").write_text(
            HISTORY_HEADER + "".join(f"{e},0.5,0.8,0.4,{0.8 + e / 1000},0.01,1.5\n" for e in range(1, epochs + 1))
        )
        if kind < 5:
            (run_dir / "metrics.json").write_text(
                json.dumps(
                    {
                        "status": "completed",
                        "best_epoch": EPOCHS,
                        "valid_loss": 0.3,
                        "valid_acc": 0.9,
                        "test_loss": 0.3,
                        "test_acc": 0.9,
                        "num_params": 1000,
                        "train_seconds": 30.0,
                        "epochs_run": EPOCHS,
                    },
                    indent=2,
                )
            )
        elif kind == 5:
            held.enter_context(lock.hold([run_dir]))
        elif kind == 6:
            (run_dir / "metrics.json").write_text(json.dumps({"status": "failed", "error": "ValueError: bad"}))
    return manifest


def time_status(manifest: Manifest) -> float:
    """Seconds of one `read` and the table, as `fmsweep status DIR` does them."""
    start = time.perf_counter()
    status.render(manifest, status.look(manifest))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fmsweep.bench.status", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs of the fake sweep (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="timed reads (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.repeat < 1:
        parser.error("--jobs and --repeat must be >= 1")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as held:
        manifest = make_sweep(Path(tmp) / "sweep", args.jobs, held)
        statuses = status.read(manifest)
        time_status(manifest)  # warm the file cache
        times = [time_status(manifest) for _ in range(args.repeat)]
    print(
        f"fmsweep status of a {args.jobs}-job sweep ({status.counts(s.state for s in statuses.values())}), "
        f"{os.cpu_count()} CPUs, median of {args.repeat}: {statistics.median(times):.3f} s "
        f"(all: {', '.join(f'{t:.3f}' for t in times)})"
    )


if __name__ == "__main__":
    main()
