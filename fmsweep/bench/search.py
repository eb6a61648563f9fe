"""`python -m fmsweep.bench.search --baseline DIR [--current DIR] [--rounds N] [--out DIR] [--data DIR] -- [overrides]`:
how busy an Optuna search keeps its slots, in this checkout against a baseline checkout of older code.

Each round runs the same search (`python -m fmsweep -m <overrides>`, DEFAULTS unless overridden after `--`) once
with each checkout, alternating which goes first so that load from other processes hits both alike; each run is a
fresh process with PYTHONPATH=<checkout> (that checkout's fmsweep, conf and hydra_plugins win over the installed
ones: checked once at start) in a fresh sweep dir under --out. Per run: the command's wall time; each trial's time,
from the first to the last timestamped line of its job's log (millisecond stamps); busy = the trials' seconds /
(wall x n_jobs), and the same over the trials' span (from the first trial's first line to the last one's last:
the command's start-up and its report left out); how the trials ended (metrics.json `status`) and the best
completed trial's valid_loss. Prints a
line per run, then a table of medians over the rounds (also in <out>/bench_search.md; the raw numbers in
<out>/bench_search.json) with the targets: busy >= 85 % and baseline wall / current wall >= 1.4.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
# the search measured, but for data.root and data.download (from --data)
DEFAULTS = (
    "hydra/sweeper=optuna",
    "hydra/launcher=submitit_local",
    "optimizer.lr=tag(log,interval(1e-5,1e-1))",
    "model=fc",
    "epochs=9",
    "data.subset=8000",
    "hydra.sweeper.pruner=halving",
    "hydra.sweeper.n_jobs=2",
    "hydra.sweeper.n_trials=12",
    "hydra.launcher.cpus_per_task=1",
)
CODES = ("baseline", "current")
STATUSES = ("completed", "pruned", "failed")
TARGET_BUSY = 0.85
TARGET_RATIO = 1.4
# Hydra's job log lines start with [YYYY-MM-DD HH:MM:SS,mmm]
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
JOB_DIR = re.compile(r"^(\d+)_")
TAIL_LINES = 20


@dataclasses.dataclass
class Trial:
    """One job of a search: its number, how it ended, its logged seconds and (when completed) its valid_loss; its
    log's first and last stamps (seconds since the epoch; None without lines)."""

    number: int
    status: str
    seconds: float
    valid_loss: float | None
    overrides: list[str]
    start: float | None = None
    end: float | None = None


def override_key(override: str) -> str:
    """`+a.b=1`, `~a.b` and `a.b=2` all set key `a.b`; `hydra/sweeper=optuna` sets `hydra/sweeper`."""
    return override.lstrip("~+").split("=", 1)[0]


def merge_overrides(defaults: list[str], extra: list[str]) -> list[str]:
    """The defaults with each key that `extra` sets replaced in place by extra's override, then extra's new keys:
    the command line names each key once, as Hydra requires."""
    given = {override_key(override): override for override in extra}
    merged = [given.pop(override_key(override), override) for override in defaults]
    return merged + [override for override in extra if override_key(override) in given]


def log_span(log: Path) -> tuple[float, float] | None:
    """The first and last timestamped lines of a job log, in seconds since the epoch (None without any)."""
    stamps = [
        datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for match in map(STAMP.match, log.read_text(errors="replace").splitlines())
        if match
    ]
    return (stamps[0], stamps[-1]) if stamps else None


def log_seconds(log: Path) -> float:
    """Seconds from the first to the last timestamped line of a job log (0 with fewer than two)."""
    span = log_span(log)
    return span[1] - span[0] if span else 0.0


def read_trial(job_dir: Path, number: int, fixed: set[str]) -> Trial:
    """A job dir's trial: seconds from its *.log (Hydra's job log; 0 without lines), status and valid_loss from
    metrics.json ("none" without one), its overrides but those of the command (`fixed`)."""
    logs = sorted(job_dir.glob("*.log"))
    metrics_file, overrides_file = job_dir / "metrics.json", job_dir / ".hydra" / "overrides.yaml"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    overrides = (yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else None) or []
    status = metrics.get("status", "none")
    spans = [span for span in map(log_span, logs) if span]
    return Trial(
        number,
        status,
        sum(log_seconds(log) for log in logs),
        metrics.get("valid_loss") if status == "completed" else None,
        [override for override in overrides if override not in fixed],
        min((a for a, _ in spans), default=None),
        max((b for _, b in spans), default=None),
    )


def read_trials(sweep_dir: Path, fixed: set[str]) -> list[Trial]:
    """The trials of a sweep dir, by number: its `<num>_<overrides>` job dirs."""
    jobs = [
        (int(match[1]), path) for path in sweep_dir.iterdir() if path.is_dir() and (match := JOB_DIR.match(path.name))
    ]
    return [read_trial(path, number, fixed) for number, path in sorted(jobs)]


def measure(code: str, round_: int, sweep_dir: Path, wall: float, overrides: list[str]) -> dict[str, Any]:
    """The numbers of one finished run: n_jobs from the sweep's multirun.yaml, its trials read back."""
    n_jobs = int(yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["sweeper"]["n_jobs"])
    trials = read_trials(sweep_dir, set(overrides))
    trial_seconds = sum(trial.seconds for trial in trials)
    completed = [(trial.valid_loss, trial) for trial in trials if trial.valid_loss is not None]
    best = min(completed, key=lambda pair: pair[0])[1] if completed else None
    starts, ends = [t.start for t in trials if t.start is not None], [t.end for t in trials if t.end is not None]
    span = max(ends) - min(starts) if starts else 0.0
    return {
        "code": code,
        "round": round_,
        "sweep_dir": str(sweep_dir),
        "wall_s": wall,
        "n_jobs": n_jobs,
        "trial_seconds": trial_seconds,
        "busy": trial_seconds / (wall * n_jobs),
        "span_s": span,
        "busy_span": trial_seconds / (span * n_jobs) if span > 0 else 0.0,
        "statuses": dict(Counter(trial.status for trial in trials)),
        "best_valid_loss": best.valid_loss if best else None,
        "best_overrides": best.overrides if best else None,
        "trials": [dataclasses.asdict(trial) for trial in trials],
    }


def run_line(run: dict[str, Any]) -> str:
    """One printed line of a run."""
    statuses = run["statuses"]
    ended = ", ".join(f"{statuses.get(name, 0)} {name}" for name in STATUSES)
    others = "".join(f", {count} {name}" for name, count in statuses.items() if name not in STATUSES)
    best = (
        "no completed trial"
        if run["best_valid_loss"] is None
        else f"best valid_loss {run['best_valid_loss']:.4f} ({' '.join(run['best_overrides'])})"
    )
    return (
        f"round {run['round']} {run['code']:<8}: wall {run['wall_s']:.1f} s, {len(run['trials'])} trials "
        f"({ended}{others}), trial-s {run['trial_seconds']:.1f}, busy {100 * run['busy']:.1f} % "
        f"of {run['n_jobs']} slots ({100 * run['busy_span']:.1f} % over the trials' span of "
        f"{run['span_s']:.1f} s), {best}"
    )


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per code the medians over its runs (best valid loss: median and min of the runs' bests), then the ratio
    baseline wall / current wall of the medians and whether the targets are met (busy: the current code's)."""
    codes: dict[str, Any] = {}
    for code in CODES:
        mine = [run for run in runs if run["code"] == code]
        bests = [run["best_valid_loss"] for run in mine if run["best_valid_loss"] is not None]
        codes[code] = {
            "runs": len(mine),
            "wall_s": statistics.median(run["wall_s"] for run in mine),
            "trial_seconds": statistics.median(run["trial_seconds"] for run in mine),
            "busy": statistics.median(run["busy"] for run in mine),
            "busy_span": statistics.median(run["busy_span"] for run in mine),
            "best_valid_loss_median": statistics.median(bests) if bests else None,
            "best_valid_loss_min": min(bests) if bests else None,
        }
    ratio = codes["baseline"]["wall_s"] / codes["current"]["wall_s"]
    return {
        "codes": codes,
        "ratio": ratio,
        "busy_met": codes["current"]["busy"] >= TARGET_BUSY,
        "busy_span_met": codes["current"]["busy_span"] >= TARGET_BUSY,
        "ratio_met": ratio >= TARGET_RATIO,
    }


def loss(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def table(summary: dict[str, Any], machine: str, command: str) -> str:
    """The markdown report of a summary."""
    lines = [
        "| code | runs | median wall s | median trial-s sum | median busy % of the wall | median busy % of the "
        "trials' span | best valid loss: median | best of rounds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for code, numbers in summary["codes"].items():
        lines.append(
            f"| {code} | {numbers['runs']} | {numbers['wall_s']:.1f} | {numbers['trial_seconds']:.1f} | "
            f"{100 * numbers['busy']:.1f} | {100 * numbers['busy_span']:.1f} | "
            f"{loss(numbers['best_valid_loss_median'])} | "
            f"{loss(numbers['best_valid_loss_min'])} |"
        )
    met = {True: "met", False: "missed"}
    return "\n".join(
        [
            *lines,
            "",
            f"baseline wall / current wall (medians): {summary['ratio']:.2f}× (target ≥ {TARGET_RATIO}×: "
            f"{met[summary['ratio_met']]})",
            f"current busy: {100 * summary['codes']['current']['busy']:.1f} % of the command's wall, "
            f"{100 * summary['codes']['current']['busy_span']:.1f} % of the trials' span, from the first trial's first "
            f"log line to the last one's last (target ≥ {100 * TARGET_BUSY:.0f} %: {met[summary['busy_met']]} of the "
            f"wall, {met[summary['busy_span_met']]} of the span)",
            "",
            f"machine: {machine}",
            f"command: `{command}`",
            "",
        ]
    )


def machine_line() -> str:
    """CPU model, core count and torch version."""
    cpuinfo = Path("/proc/cpuinfo")
    models = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.is_file() else []
    return (
        f"{models[0] if models else platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {importlib.metadata.version('torch')}"
    )


def checkout_env(checkout: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(checkout)}


def check_imports(checkout: Path) -> str:
    """Where fmsweep and its sweeper plugin import from under PYTHONPATH=<checkout>; exits unless from it."""
    probe = (
        "import fmsweep, hydra_plugins.fmsweep_sweeper.search_sweeper as s, conf; "
        "print(fmsweep.__file__, s.__file__, conf.__file__, sep='\\n')"
    )
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run(
            [sys.executable, "-c", probe], cwd=cwd, env=checkout_env(checkout), capture_output=True, text=True
        )
    files = done.stdout.split()
    if done.returncode or len(files) != 3 or not all(Path(file).is_relative_to(checkout) for file in files):
        sys.exit(
            f"fmsweep.bench.search: error: PYTHONPATH={checkout} does not import its own fmsweep, "
            f"hydra_plugins and conf:\n{done.stdout}{done.stderr}"
        )
    return files[0]


def run_search(checkout: Path, overrides: list[str], sweep_dir: Path) -> float:
    """Run the search with a checkout's code into `sweep_dir` (its output in `<sweep_dir>.out`); its wall
    seconds. A failed run prints its last lines and exits 1."""
    command = [sys.executable, "-m", "fmsweep", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    with tempfile.TemporaryDirectory() as cwd:
        start = time.monotonic()
        done = subprocess.run(
            command, cwd=cwd, env=checkout_env(checkout), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        wall = time.monotonic() - start
    sweep_dir.with_name(sweep_dir.name + ".out").write_text(done.stdout)
    if done.returncode:
        tail = "\n".join(done.stdout.splitlines()[-TAIL_LINES:])
        print(
            f"fmsweep.bench.search: error: PYTHONPATH={checkout} {shlex.join(command)} exited with "
            f"{done.returncode}; its last lines:\n{tail}",
            file=sys.stderr,
        )
        sys.exit(1)
    return wall


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m fmsweep.bench.search", description=__doc__.splitlines()[1])
    add = parser.add_argument
    add("--baseline", type=Path, required=True, metavar="DIR", help="checkout of the older code (its repo root)")
    add("--current", type=Path, default=REPO, metavar="DIR", help="checkout measured (default: %(default)s)")
    add("--rounds", type=int, default=3, metavar="N", help="runs of each code (default: %(default)s)")
    add("--out", type=Path, metavar="DIR", help="where the sweep dirs and reports go (default: a new temp dir)")
    add("--data", type=Path, default=DATA, metavar="DIR", help="data.root of the search (default: %(default)s)")
    add("overrides", nargs="*", help="after --: overrides of the search, replacing the defaults' keys")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    checkouts = {"baseline": args.baseline.resolve(), "current": args.current.resolve()}
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench_search-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    overrides = merge_overrides([*DEFAULTS, f"data.root={args.data.resolve()}", "data.download=false"], args.overrides)
    command = shlex.join(["python", "-m", "fmsweep.bench.search", *argv])
    machine = machine_line()
    for code, checkout in checkouts.items():
        print(f"{code}: {checkout} (fmsweep from {check_imports(checkout)})")
    print(f"search: python -m fmsweep -m {shlex.join(overrides)}\nout: {out}", flush=True)
    runs = []
    for round_ in range(1, args.rounds + 1):
        for code in CODES if round_ % 2 else reversed(CODES):
            sweep_dir = out / f"round{round_}-{code}"
            wall = run_search(checkouts[code], overrides, sweep_dir)
            runs.append(measure(code, round_, sweep_dir, wall, overrides))
            print(run_line(runs[-1]), flush=True)
    summary = summarize(runs)
    report = table(summary, machine, command)
    print(f"\n{report}", end="")
    (out / "bench_search.md").write_text(report)
    (out / "bench_search.json").write_text(
        json.dumps(
            {
                "command": command,
                "machine": machine,
                "checkouts": {code: str(path) for code, path in checkouts.items()},
                "overrides": overrides,
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
