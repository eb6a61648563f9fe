"""`python -m fmsweep.bench_startup [--repeat N] [overrides]`: how long the command line takes before it does
anything useful, as a user (and every job of a sweep) pays it: `fmsweep --help` to its exit, and a
`model=linear epochs=1` run from the command to its first training batch (the run's start line, logged just
before the first batch). Medians of N runs, in fresh processes, after one untimed run of each."""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_LINE = "[fmsweep.train][INFO] - run dir "


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
        proc = subprocess.Popen([*command(), "model=linear", "epochs=1", *overrides, f"hydra.run.dir={run_dir}"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        output = []
        for line in proc.stdout:  # the logging handler flushes each line
            if START_LINE in line:
                seconds = time.perf_counter() - start
                proc.wait()
                return seconds
            output.append(line)
        proc.wait()
    sys.exit(f"fmsweep.bench_startup: error: the run ended without its start line:\n{''.join(output[-20:])}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fmsweep.bench_startup", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="config overrides of the run, e.g. data.root=DIR data.download=false")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    time_help(), time_to_first_batch(args.overrides)  # warm the file cache
    helps = [time_help() for _ in range(args.repeat)]
    firsts = [time_to_first_batch(args.overrides) for _ in range(args.repeat)]
    print(f"{' '.join(command())} ({os.cpu_count()} CPUs), medians of {args.repeat}:")
    print(f"  --help:                                  {statistics.median(helps):.2f} s  (all: "
          f"{', '.join(f'{t:.2f}' for t in helps)})")
    print(f"  model=linear epochs=1 to its first batch: {statistics.median(firsts):.2f} s  (all: "
          f"{', '.join(f'{t:.2f}' for t in firsts)})")


if __name__ == "__main__":
    main()
