"""`python -m fmsweep.bench.search` without training: the reading of a sweep dir (job logs, metrics.json, overrides)
and the busy, median and ratio arithmetic on fake sweeps with known times; the whole command against a fake
checkout whose `python -m fmsweep` writes such a sweep; that a checkout's code wins under its PYTHONPATH; and that a
failed run ends the bench with its last lines."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fmsweep.bench import search as bench_search

# the fake `python -m fmsweep -m ... hydra.sweep.dir=DIR` of a fake checkout: one completed trial of 1.5 s
FAKE_MAIN = """
import json, sys
from pathlib import Path
print(*sys.argv[1:])
sweep = Path(next(arg.split("=", 1)[1] for arg in sys.argv if arg.startswith("hydra.sweep.dir=")))
job = sweep / "0_optimizer.lr=0.01"
(job / ".hydra").mkdir(parents=True)
(sweep / "multirun.yaml").write_text("hydra:\\n  sweeper:\\n    n_jobs: 2\\n")
(job / "__main__.log").write_text("[2026-01-01 10:00:00,000][x][INFO] - run dir\\n[2026-01-01 10:00:01,500][x] done\\n")
(job / "metrics.json").write_text(json.dumps({"status": "completed", "valid_loss": 0.25}))
(job / ".hydra" / "overrides.yaml").write_text("- epochs=2\\n- optimizer.lr=0.01\\n")
"""


def write_job(sweep: Path, name: str, stamps: list[str], metrics: dict[str, Any] | None, overrides: list[str]) -> None:
    """A job dir as Hydra and fmsweep leave it: its log (a line per stamp, plus an unstamped traceback line),
    metrics.json (unless None) and .hydra/overrides.yaml."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    lines = [f"[{stamp}][fmsweep.train][INFO] - line {i}" for i, stamp in enumerate(stamps)]
    (job / "__main__.log").write_text("\n".join([*lines[:1], "Traceback (most recent call last):", *lines[1:]]))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {override}\n" for override in overrides))


def fake_sweep(sweep: Path) -> None:
    """Four trials of 7.25, 2.5 (across midnight), 0 (one line) and 1.25 s; the pruned one has the lowest loss."""
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra:\n  sweeper:\n    n_trials: 4\n    n_jobs: 2\n")
    (sweep / ".submitit").mkdir()
    (sweep / "report.md").write_text("not a job\n")
    write_job(
        sweep,
        "0_epochs=2,optimizer.lr=0.01",
        ["2026-01-01 10:00:00,000", "2026-01-01 10:00:07,250"],
        {"status": "completed", "valid_loss": 0.5},
        ["epochs=2", "optimizer.lr=0.01"],
    )
    write_job(
        sweep,
        "1_epochs=2,optimizer.lr=0.1",
        ["2026-01-01 23:59:58,500", "2026-01-02 00:00:00,000", "2026-01-02 00:00:01,000"],
        {"status": "pruned", "valid_loss": 0.3, "pruned": 1},
        ["epochs=2", "optimizer.lr=0.1"],
    )
    write_job(
        sweep,
        "2_epochs=2,optimizer.lr=1.0",
        ["2026-01-01 10:00:00,000"],
        {"status": "failed", "error": "diverged"},
        ["epochs=2", "optimizer.lr=1.0"],
    )
    write_job(
        sweep,
        "10_epochs=2,optimizer.lr=0.001",
        ["2026-01-01 10:00:10,000", "2026-01-01 10:00:11,250"],
        {"status": "completed", "valid_loss": 0.4},
        ["epochs=2", "optimizer.lr=0.001"],
    )


def test_a_run_is_measured_from_its_job_logs_and_metrics(tmp_path: Path) -> None:
    fake_sweep(tmp_path / "sweep")
    run = bench_search.measure("baseline", 1, tmp_path / "sweep", 10.0, ["model=fc", "epochs=2"])
    assert [(trial["number"], trial["status"], trial["seconds"]) for trial in run["trials"]] == [
        (0, "completed", 7.25),
        (1, "pruned", 2.5),
        (2, "failed", 0.0),
        (10, "completed", 1.25),
    ]
    assert run["n_jobs"] == 2 and run["trial_seconds"] == pytest.approx(11.0)
    assert run["busy"] == pytest.approx(11.0 / (10.0 * 2))
    # the trials' span: from 10:00:00 to the pruned trial's last line, past midnight
    assert run["span_s"] == pytest.approx(14 * 3600 + 1.0) and run["busy_span"] == pytest.approx(11.0 / (2 * 50401))
    assert run["statuses"] == {"completed": 2, "pruned": 1, "failed": 1}
    # the pruned trial's 0.3 is no result: the best is the completed 0.4, with what the command did not fix
    assert (run["best_valid_loss"], run["best_overrides"]) == (0.4, ["optimizer.lr=0.001"])
    assert bench_search.run_line(run) == (
        "round 1 baseline: wall 10.0 s, 4 trials (2 completed, 1 pruned, 1 failed), trial-s 11.0, busy 55.0 % "
        "of 2 slots (0.0 % over the trials' span of 50401.0 s), best valid_loss 0.4000 (optimizer.lr=0.001)"
    )


def test_a_job_without_metrics_counts_as_none_and_no_completed_trial_has_no_best(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra:\n  sweeper:\n    n_jobs: 3\n")
    write_job(sweep, "0_", ["2026-01-01 10:00:00,000", "2026-01-01 10:00:03,000"], None, [])
    run = bench_search.measure("current", 2, sweep, 4.0, [])
    assert (run["statuses"], run["trial_seconds"], run["busy"]) == ({"none": 1}, 3.0, 0.25)
    assert (run["best_valid_loss"], run["best_overrides"]) == (None, None)
    assert bench_search.run_line(run).endswith(
        "(0 completed, 0 pruned, 0 failed, 1 none), trial-s 3.0, "
        "busy 25.0 % of 3 slots (33.3 % over the trials' span of 3.0 s), "
        "no completed trial"
    )


def runs(code: str, walls: list[float], seconds: list[float], bests: list[float | None]) -> list[dict[str, Any]]:
    """Runs of 2 slots whose trials span their wall but 1 s."""
    return [
        {
            "code": code,
            "wall_s": wall,
            "trial_seconds": trial_seconds,
            "busy": trial_seconds / (2 * wall),
            "busy_span": trial_seconds / (2 * (wall - 1)),
            "best_valid_loss": best,
        }
        for wall, trial_seconds, best in zip(walls, seconds, bests)
    ]


def test_the_summary_takes_medians_per_code_and_checks_the_targets() -> None:
    summary = bench_search.summarize(
        [
            *runs("baseline", [30.0, 10.0, 20.0], [20.0, 8.0, 16.0], [0.5, None, 0.3]),
            *runs("current", [10.0, 14.0, 12.0], [18.0, 22.0, 20.64], [None, None, None]),
        ]
    )
    baseline, current = summary["codes"]["baseline"], summary["codes"]["current"]
    assert (baseline["runs"], baseline["wall_s"], baseline["trial_seconds"]) == (3, 20.0, 16.0)
    assert baseline["busy"] == pytest.approx(0.4)  # busies 1/3, 0.4, 0.4
    assert (baseline["best_valid_loss_median"], baseline["best_valid_loss_min"]) == (pytest.approx(0.4), 0.3)
    assert (current["wall_s"], current["busy"]) == (12.0, pytest.approx(0.86))  # busies 0.9, 0.786, 0.86
    assert (current["best_valid_loss_median"], current["best_valid_loss_min"]) == (None, None)
    assert summary["ratio"] == pytest.approx(20 / 12) and summary["ratio_met"] and summary["busy_met"]
    report = bench_search.table(summary, "CPU X, 2 cores, torch 2.0", "python -m fmsweep.bench.search --rounds 3")
    assert (baseline["busy_span"], current["busy_span"]) == (pytest.approx(16 / 38), pytest.approx(20.64 / 22))
    assert "| baseline | 3 | 20.0 | 16.0 | 40.0 | 42.1 | 0.4000 | 0.3000 |" in report
    assert "| current | 3 | 12.0 | 20.6 | 86.0 | 93.8 | – | – |" in report
    assert "baseline wall / current wall (medians): 1.67× (target ≥ 1.4×: met)" in report
    assert (
        "current busy: 86.0 % of the command's wall, 93.8 % of the trials' span, from the first trial's first "
        "log line to the last one's last (target ≥ 85 %: met of the wall, met of the span)"
    ) in report
    assert "machine: CPU X, 2 cores, torch 2.0\ncommand: `python -m fmsweep.bench.search --rounds 3`" in report


def test_targets_are_missed_below_them() -> None:
    summary = bench_search.summarize(
        [*runs("baseline", [13.9], [10.0], [0.5]), *runs("current", [10.0], [16.9], [0.5])]
    )
    assert (summary["ratio"], summary["ratio_met"], summary["busy_met"]) == (pytest.approx(1.39), False, False)
    report = bench_search.table(summary, "m", "c")
    assert summary["busy_span_met"] and "1.39× (target ≥ 1.4×: missed)" in report
    assert "84.5 % of the command's wall, 93.9 % of the trials' span" in report
    assert "(target ≥ 85 %: missed of the wall, met of the span)" in report


def test_overrides_after_the_dashes_replace_the_defaults_keys() -> None:
    merged = bench_search.merge_overrides(
        ["hydra/sweeper=optuna", "epochs=9", "data.subset=8000"],
        ["epochs=2", "+seed=3", "hydra/sweeper=grid", "~data.subset"],
    )
    assert merged == ["hydra/sweeper=grid", "epochs=2", "~data.subset", "+seed=3"]


def fake_checkout(root: Path, main: str = FAKE_MAIN) -> Path:
    """A checkout with its own fmsweep (whose `python -m fmsweep` runs `main`), sweeper plugin and conf."""
    for package in ("fmsweep", "hydra_plugins/fmsweep_sweeper", "conf"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "hydra_plugins" / "fmsweep_sweeper" / "search_sweeper.py").write_text("")
    (root / "fmsweep" / "__main__.py").write_text(main)
    return root


def test_a_checkout_under_its_pythonpath_imports_its_own_code(tmp_path: Path) -> None:
    checkout = fake_checkout(tmp_path / "old")
    assert bench_search.check_imports(checkout) == str(checkout / "fmsweep" / "__init__.py")
    (checkout / "conf" / "__init__.py").unlink()
    (checkout / "conf").rmdir()  # conf now comes from the installed fmsweep's repo
    with pytest.raises(SystemExit, match="does not import its own fmsweep, hydra_plugins and conf"):
        bench_search.check_imports(checkout)


def test_the_bench_alternates_the_codes_and_writes_its_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkout = fake_checkout(tmp_path / "old")
    argv = [
        "--baseline",
        str(checkout),
        "--current",
        str(checkout),
        "--rounds",
        "2",
        "--out",
        str(tmp_path / "out"),
        "--data",
        str(tmp_path / "data"),
        "--",
        "epochs=2",
        "seed=1",
    ]
    bench_search.main(argv)
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("round")] == [
        "round 1 baseline",
        "round 1 current ",
        "round 2 current ",
        "round 2 baseline",
    ]
    report = json.loads((tmp_path / "out" / "bench_search.json").read_text())
    assert [run["trial_seconds"] for run in report["runs"]] == [1.5] * 4
    assert all(run["best_overrides"] == ["optimizer.lr=0.01"] for run in report["runs"])
    assert report["command"] == "python -m fmsweep.bench.search " + " ".join(argv)
    command = (tmp_path / "out" / "round2-current.out").read_text()
    assert " model=fc epochs=2 data.subset=8000 " in command and "epochs=9" not in command
    assert command.endswith(
        f" data.root={tmp_path / 'data'} data.download=false seed=1 "
        f"hydra.sweep.dir={tmp_path / 'out' / 'round2-current'}\n"
    )
    table = (tmp_path / "out" / "bench_search.md").read_text()
    assert out.endswith("\n" + table) and "| current | 2 |" in table


def test_a_failed_run_prints_its_last_lines_and_ends_the_bench(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkout = fake_checkout(
        tmp_path / "old",
        textwrap.dedent("""
        import sys
        for i in range(25):
            print("line", i)
        sys.exit(3)
    """),
    )
    with pytest.raises(SystemExit) as ended:
        bench_search.main(["--baseline", str(checkout), "--rounds", "1", "--out", str(tmp_path / "out")])
    assert ended.value.code == 1
    captured = capsys.readouterr()
    assert "exited with 3; its last lines:\n" + "\n".join(f"line {i}" for i in range(5, 25)) in captured.err
    assert "round 1" not in captured.out and not (tmp_path / "out" / "bench_search.md").exists()
