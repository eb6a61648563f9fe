"""What TensorBoard gets from a sweep: run names from job overrides, the same hparams keys in every run,
test samples and a confusion matrix (also as files in the run dir); the log line's percentages."""

import io
import json
from pathlib import Path

import matplotlib.image
import pytest
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator
from tensorboard.plugins.hparams import metadata

from fmsweep.tracking import CONFUSION_PNG, METRIC_TAGS, SAMPLES_PNG, epoch_line

JOBS = [("linear", 0), ("linear", 1), ("fc", 0), ("fc", 1)]


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0]))


def test_job_dirs_are_named_by_number_and_overrides_without_paths(tiny_sweep: Path) -> None:
    # TensorBoard names a run by its folder relative to --logdir: these names tell the jobs apart
    names = [d.name for d in job_dirs(tiny_sweep)]
    assert names == [f"{i}_batch_size=64,epochs=2,model={m},seed={s}" for i, (m, s) in enumerate(JOBS)]
    # one run per job: every event file lies directly in its job dir (hparams included, no extra run folder)
    assert {p.parent.name for p in tiny_sweep.rglob("events.out.tfevents.*")} == set(names)


def test_every_run_logs_the_same_hparams_keys_with_its_values_and_final_metrics(tiny_sweep: Path) -> None:
    keys = []
    for run_dir, (model, seed) in zip(job_dirs(tiny_sweep), JOBS):
        events = EventAccumulator(str(run_dir)).Reload()
        content = events.PluginTagToContent(metadata.PLUGIN_NAME)
        # no experiment summary: TensorBoard builds the table from all runs and marks what differs
        assert set(content) == {metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG}
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
        keys.append(sorted(hparams))
        assert set(hparams["overrides"].split(",")) == {f"model={model}", f"seed={seed}", "batch_size=64", "epochs=2"}
        assert hparams["model"] == {"linear": "Linear", "fc": "FullyConnected"}[model]
        assert hparams["seed"] == seed and hparams["batch_size"] == 64 and hparams["optimizer"] == "Adam"
        assert hparams["data.subset"] == "None"

        metrics = json.loads((run_dir / "metrics.json").read_text())
        for tag, key in METRIC_TAGS.items():
            assert events.Scalars(tag)[-1].value == pytest.approx(metrics[key], rel=1e-6)
    assert all(k == keys[0] for k in keys)  # every run fills every column of the HPARAMS table
    assert {"optimizer.lr", "reg.l2", "reg.dropout", "aug.hflip", "data.normalize", "epochs"} <= set(keys[0])


def test_each_run_logs_test_samples_and_a_confusion_matrix(tiny_sweep: Path) -> None:
    for run_dir in job_dirs(tiny_sweep):
        events = EventAccumulator(str(run_dir), size_guidance={IMAGES: 0}).Reload()
        assert set(events.Tags()["images"]) == {"test/samples", "test/confusion_matrix"}
        for tag in ("test/samples", "test/confusion_matrix"):
            image = events.Images(tag)[-1]
            pixels = matplotlib.image.imread(io.BytesIO(image.encoded_image_string), format="png")
            assert pixels.shape[:2] == (image.height, image.width) and image.width > 500
            assert pixels.std() > 0.05
            # the same figure as a file in the run dir, for the report (written before metrics.json)
            name = {"test/samples": SAMPLES_PNG, "test/confusion_matrix": CONFUSION_PNG}[tag]
            assert (matplotlib.image.imread(run_dir / name)[..., :3] == pixels[..., :3]).all()
            assert (run_dir / name).stat().st_mtime_ns <= (run_dir / "metrics.json").stat().st_mtime_ns


def test_the_log_line_gives_accuracies_in_percent() -> None:
    row = {
        "epoch": 1,
        "train_loss": 0.46961,
        "train_acc": 0.83264,
        "valid_loss": 0.41,
        "valid_acc": 0.855,
        "lr": 0.001,
        "epoch_seconds": 1.149,
    }
    assert epoch_line(row) == "train_loss 0.4696  train_acc 83.26%  valid_loss 0.41  valid_acc 85.50%  lr 0.001  1.15s"
