"""`python -m fmsweep.bench` as a smoke test on the tiny data set: both pipelines train, both files appear; and
`python -m fmsweep.bench_startup --grid`, which times sweeps to their first job. No timing is asserted (other
processes share the machine)."""
import json
import re
import statistics
from pathlib import Path

import pytest
import torch

from fmsweep import bench, bench_startup, train


def test_bench_drives_the_real_train_step_in_both_pipelines_and_reports_what_it_timed(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = 0
    step = train.PackStep.__call__

    def counting(self: train.PackStep, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal steps
        steps += 1
        return step(self, x, y)

    monkeypatch.setattr(train.PackStep, "__call__", counting)
    bench.main(["--cases", "linear,fancy_cnn+flip_affine", "--epochs", "2", "--warmup", "1", "--cpu-cnn-batches", "1",
                "--workers", "1", "--out", str(tmp_path),
                f"data.root={data_root}", "data.download=false", "device=cpu", "batch_size=32"])
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


def test_bench_startup_times_sweeps_to_their_first_job(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench_startup.main(["--grid", "2", "--repeat", "1", f"data.root={data_root}", "data.download=false", "device=cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("CPUs), medians of 1:")
    assert [re.sub(r"\d+\.\d\d", "T", line) for line in lines[1:]] == [
        "  2 jobs of model=linear epochs=1 to the first: T s  (all: T)"]


def test_bench_startup_says_why_a_sweep_ended_before_its_first_job(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="the sweep ended before its first job:\n.*fmsweep: error: "):
        bench_startup.main(["--grid", "2", "--repeat", "1", f"data.root={tmp_path}", "data.download=false"])
