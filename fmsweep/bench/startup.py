"""`python -m fmsweep.bench.startup [--repeat N] [--grid N,...] [overrides]`: how long the command line takes
before it does anything useful, as a user (and every job of a sweep) pays it: `fmsweep --help` to its exit, and a
`model=linear epochs=1` run from the command to its first training batch (the run's start line, logged just
before the first batch); with --grid, instead, sweeps of N such runs (one seed each, basic launcher) from the
command to their first job, which waits for the sweep's check of every job (fmsweep.sweep.prelaunch). Medians of
N runs, in fresh processes, after one untimed run of each."""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_LINE = "[fmsweep.train][INFO] - run dir "
# what a sweep's job writes first in its own dir, as it starts
FIRST_JOB = "*/.hydra/config.yaml"


def command() -> list[str]:
    """The `fmsweep` console script of this Python's environment, else `python -m fmsweep`."""
    script = Path(sys.executable).parent / "fmsweep"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fmsweep"]


def time_help() -> float:
    """Seconds of `fmsweep --help`, start to exit."""
    start = time.perf_counter()
    subprocess.run([*command(), "--help"], check=True, capture_output=True)
    return time.perf_counter() - start


def time_to_first_batch(overrides: list[str]) -> float:
    """Seconds from starting a 1-epoch linear run to its start line (the first training batch follows it)."""
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*command(), "model=linear", "epochs=1", *overrides, f"hydra.run.dir={run_dir}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        output = []
        for line in proc.stdout:  # the logging handler flushes each line
            if START_LINE in line:
                seconds = time.perf_counter() - start
                proc.wait()
                return seconds
            output.append(line)
        proc.wait()
    sys.exit(f"fmsweep.bench.startup: error: the run ended without its start line:\n{''.join(output[-20:])}")


def time_to_first_job(jobs: int, overrides: list[str]) -> float:
    """Seconds from starting a sweep of `jobs` 1-epoch linear runs (`seed=range(jobs)`) to its first job's
    .hydra/config.yaml; the sweep (its process group) is then killed."""
    with tempfile.TemporaryDirectory() as sweep_dir, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [
                *command(),
                "-m",
                "model=linear",
                "epochs=1",
                f"seed=range({jobs})",
                *overrides,
                f"hydra.sweep.dir={sweep_dir}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        ended = False
        while not any(Path(sweep_dir).glob(FIRST_JOB)):
            if ended:
                stderr.seek(0)
                sys.exit(
                    f"fmsweep.bench.startup: error: the sweep ended before its first job:\n"
                    f"{stderr.read().decode(errors='replace')[-4000:]}"
                )
            ended = proc.poll() is not None  # one more look: the job may have started just before the end
            time.sleep(0.01)
        seconds = time.perf_counter() - start
        if proc.poll() is None:  # not reaped yet: its process group is there
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return seconds


def grids(text: str) -> list[int]:
    """`--grid 20,200`: the sweep sizes, each >= 1."""
    sizes = [int(size) for size in text.split(",")]
    if min(sizes) < 1:
        raise ValueError(text)
    return sizes


def report(name: str, seconds: list[float]) -> None:
    print(f"  {name:<41} {statistics.median(seconds):.2f} s  (all: {', '.join(f'{t:.2f}' for t in seconds)})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fmsweep.bench.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each (default: %(default)s)")
    parser.add_argument(
        "--grid",
        type=grids,
        metavar="N,...",
        help="instead: sweeps of N runs (seed=range(N)), from the command to their first job",
    )
    parser.add_argument(
        "overrides", nargs="*", help="config overrides of the run, e.g. data.root=DIR data.download=false"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.grid:
        time_to_first_job(min(args.grid), args.overrides)  # warm the file cache
        by_jobs = {jobs: [time_to_first_job(jobs, args.overrides) for _ in range(args.repeat)] for jobs in args.grid}
        print(f"{' '.join(command())} -m ({os.cpu_count()} CPUs), medians of {args.repeat}:")
        for jobs, seconds in by_jobs.items():
            report(f"{jobs} jobs of model=linear epochs=1 to the first:", seconds)
        return
    time_help(), time_to_first_batch(args.overrides)  # warm the file cache
    helps = [time_help() for _ in range(args.repeat)]
    firsts = [time_to_first_batch(args.overrides) for _ in range(args.repeat)]
    print(f"{' '.join(command())} ({os.cpu_count()} CPUs), medians of {args.repeat}:")
    report("--help:", helps)
    report("model=linear epochs=1 to its first batch:", firsts)


if __name__ == "__main__":
    main()
