"""`python -m fmsweep.bench` as a smoke test on the tiny data set: both pipelines train, both files appear; and
`python -m fmsweep.bench.startup --grid`, which times sweeps to their first job. No timing is asserted (other
processes share the machine)."""

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from fmsweep import train
from fmsweep.bench import startup as bench_startup
from fmsweep.bench import step as bench


def test_bench_drives_the_real_train_step_in_both_pipelines_and_reports_what_it_timed(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = 0
    step = train.PackStep.__call__

    def counting(self: train.PackStep, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal steps
        steps += 1
        return step(self, x, y)

    monkeypatch.setattr(train.PackStep, "__call__", counting)
    bench.main(
        [
            "--cases",
            "linear,fancy_cnn+flip_affine",
            "--epochs",
            "2",
            "--warmup",
            "1",
            "--cpu-cnn-batches",
            "1",
            "--workers",
            "1",
            "--out",
            str(tmp_path),
            f"data.root={data_root}",
            "data.download=false",
            "device=cpu",
            "batch_size=32",
        ]
    )
    # fmsweep's epochs go through train.PackStep: 13 batches of linear (400 images), 1 of the CNN, 3 epochs each
    assert steps == 3 * 13 + 3 * 1
    report = json.loads((tmp_path / "bench.json").read_text())
    linear, fancy = report["results"]
    assert (linear["case"], linear["images_per_epoch"], linear["limited_batches"]) == ("linear", 400, False)
    assert (fancy["case"], fancy["images_per_epoch"], fancy["limited_batches"]) == ("fancy_cnn+flip_affine", 32, True)
    for result in report["results"]:
        median = {name: statistics.median(seconds) for name, seconds in result["epoch_seconds"].items()}
        assert median == result["median_seconds"] and all(len(s) == 2 for s in result["epoch_seconds"].values())
        assert result["speedup"] == pytest.approx(median["practical"] / median["fmsweep"])
        assert result["images_per_second"]["fmsweep"] == pytest.approx(result["images_per_epoch"] / median["fmsweep"])
    table = (tmp_path / "bench.md").read_text()
    assert f"| linear | 400 | {linear['median_seconds']['practical']:.3f} |" in table
    assert f"| {linear['speedup']:.2f}× |" in table and "| fancy_cnn+flip_affine | 32 * |" in table
    assert "train on 1 batches per epoch" in table


def accept_out(out: Path, stacked: bool, one_by_one_stacked: bool) -> Path:
    """What tests/gpu/accept.sh --tiny leaves in OUT_DIR for its table: every step passed, each bench reporting
    how its pack trained as given."""
    out.mkdir()
    (out / "steps.tsv").write_text(
        "".join(
            f"{step}\t0\t1000000000\t0\n"
            for step in ("pytest", "bench-lone", "bench-stacked", "bench-one-by-one", "sweep", "ensemble")
        )
    )
    (out / "pytest.xml").write_text(
        '<testsuites><testsuite tests="1" failures="0" errors="0" skipped="0"/></testsuites>'
    )
    benches = {"bench-lone": {"median_seconds": {"fmsweep": 0.1}, "limited_batches": True, "speedup": 2.0}}
    for name, stacks in (("bench-stacked", stacked), ("bench-one-by-one", one_by_one_stacked)):
        benches[name] = {"stacked": stacks, "ratio": 1.5, "median_seconds": {"packed": 1.0}, "job_epochs": 1}
    for name, result in benches.items():
        (out / name).mkdir()
        (out / name / "bench.json").write_text(json.dumps({"machine": {}, "results": [result]}))
    (out / "sweep").mkdir()
    (out / "sweep" / "ensemble.json").write_text(json.dumps({"average": {"acc": 0.9}, "members": [{"acc": 0.8}]}))
    return out


@pytest.mark.parametrize(
    "stacked, one_by_one_stacked, verdict",
    [(True, False, 0), (False, False, 1), (True, True, 1)],
    ids=["as-asked", "stacked-did-not-stack", "both-stacked"],
)
def test_the_gpu_acceptance_table_fails_where_a_pack_bench_did_not_train_as_asked(
    tmp_path: Path, stacked: bool, one_by_one_stacked: bool, verdict: int
) -> None:
    """tests/gpu/accept.sh's table, tiny (no targets): a stacked bench that trained one after another, or a
    one-by-one bench that stacked, is a failure, named in the table."""
    out = accept_out(tmp_path / "out", stacked, one_by_one_stacked)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "gpu" / "table.py"), str(out), "--tiny"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == verdict, proc.stdout + proc.stderr
    rows = {line.split(" | ")[0].lstrip("| "): line for line in proc.stdout.splitlines() if line.startswith("| bench-")}
    assert rows["bench-stacked: the pack of 6 trained"].endswith(" | stacked | ok |" if stacked else " | FAILED |")
    assert rows["bench-one-by-one: the pack of 6 trained"].endswith(
        " | FAILED |" if one_by_one_stacked else " | one after another | ok |"
    )


def test_bench_startup_times_sweeps_to_their_first_job(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench_startup.main(["--grid", "2", "--repeat", "1", f"data.root={data_root}", "data.download=false", "device=cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("CPUs), medians of 1:")
    assert [re.sub(r"\d+\.\d\d", "T", line) for line in lines[1:]] == [
        "  2 jobs of model=linear epochs=1 to the first: T s  (all: T)"
    ]


def test_bench_startup_says_why_a_sweep_ended_before_its_first_job(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"the sweep ended before its first job:\n.*fmsweep: error: "):
        bench_startup.main(["--grid", "2", "--repeat", "1", f"data.root={tmp_path}", "data.download=false"])
