"""`python -m fmsweep.bench` as a smoke test on the tiny data set: both pipelines train, both files appear.
No timing is asserted (other processes share the machine)."""
import json
from pathlib import Path

from fmsweep import bench


def test_bench_times_both_pipelines_and_writes_json_and_markdown(data_root: Path, tmp_path: Path) -> None:
    bench.main(["--cases", "linear,fancy_cnn+flip_affine", "--epochs", "1", "--warmup", "0", "--cpu-cnn-batches", "1",
                "--workers", "1", "--out", str(tmp_path),
                f"data.root={data_root}", "data.download=false", "device=cpu", "batch_size=32"])
    report = json.loads((tmp_path / "bench.json").read_text())
    linear, fancy = report["results"]
    assert (linear["case"], linear["images_per_epoch"], linear["limited_batches"]) == ("linear", 400, False)
    assert (fancy["case"], fancy["images_per_epoch"], fancy["limited_batches"]) == ("fancy_cnn+flip_affine", 32, True)
    for result in report["results"]:
        assert set(result["epoch_seconds"]) == {"practical", "fmsweep"}
        assert all(len(s) == 1 and s[0] > 0 for s in result["epoch_seconds"].values())
        assert result["speedup"] > 0
    table = (tmp_path / "bench.md").read_text()
    assert "| linear | 400 |" in table and "| fancy_cnn+flip_affine | 32 * |" in table
    assert "train on 1 batches per epoch" in table
