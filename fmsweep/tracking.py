"""What a run records: TensorBoard events, summary.txt, history.csv, samples.png, confusion.png and metrics.json."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig

from fmsweep.errors import UserError
from fmsweep.files import atomic_write

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

# What each epoch records: its history.csv column -> the tag of its TensorBoard scalar. The log line, history.csv
# and TensorBoard all follow this table.
EPOCH_METRICS = {
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "valid_loss": "valid/loss",
    "valid_acc": "valid/acc",
    "lr": "lr",
}
HISTORY_FIELDS = ("epoch", *EPOCH_METRICS, "epoch_seconds")
# Scalars of the best model, logged at its epoch: the final metrics next to the hparams in TensorBoard.
METRIC_TAGS = {
    "valid/best_loss": "valid_loss",
    "valid/best_acc": "valid_acc",
    "test/loss": "test_loss",
    "test/acc": "test_acc",
}
# The test images of `predictions`, also as files in the run dir.
SAMPLES_PNG, CONFUSION_PNG = "samples.png", "confusion.png"


class Tracker:
    """Writes a run's records into its directory; every file is replaced atomically.

    The records are derived from what last.pt holds: each attempt of a run (first start or resume) writes
    summary.txt and history.csv from it, and on its first TensorBoard write deletes the event files of earlier
    attempts and opens one fresh event file holding the summary and every epoch of `history`. Whatever an
    interrupted attempt logged after its last checkpoint is thus dropped, and no scalar appears twice, whichever
    TensorBoard reader looks.
    """

    def __init__(self, run_dir: Path, summary: str, history: list[dict[str, float]]) -> None:
        self.run_dir, self.summary, self.resumed = run_dir, summary, list(history)
        self._writer: SummaryWriter | None = None
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "summary.txt", summary)
        self._history(history)

    @property
    def writer(self) -> SummaryWriter:
        """The attempt's event file, opened at its first use: importing TensorBoard would delay the first batch."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            for path in self.run_dir.glob("events.out.tfevents.*"):
                path.unlink()
            self._writer = SummaryWriter(str(self.run_dir))
            self._writer.add_text("summary", "```\n" + self.summary + "\n```")
            for row in self.resumed:
                self._scalars(row)
        return self._writer

    def _scalars(self, row: dict[str, float]) -> None:
        for key, tag in EPOCH_METRICS.items():
            self.writer.add_scalar(tag, row[key], row["epoch"])

    def _history(self, history: list[dict[str, float]]) -> None:
        out = io.StringIO()
        writer = csv.DictWriter(out, HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)
        atomic_write(self.run_dir / "history.csv", out.getvalue())

    def epoch(self, history: list[dict[str, float]]) -> None:
        """Log the newest history row as scalars and rewrite history.csv (after last.pt holds that epoch)."""
        self._scalars(history[-1])
        self.writer.flush()
        self._history(history)

    def predictions(self, images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor, step: int) -> None:
        """Log a grid of test images with predicted/true labels and the test confusion matrix as images, and write
        them as samples.png and confusion.png (before metrics.json: a completed run has them, for its report)."""
        from fmsweep.results import figures  # matplotlib: only once a run has finished training

        n = len(figures.CLASSES)
        matrix = torch.bincount(labels.cpu() * n + predicted.cpu(), minlength=n * n).reshape(n, n)
        accuracy = matrix.trace().item() / len(labels)
        title = f"confusion matrix, test set ({len(labels)} images, accuracy {100 * accuracy:.2f} %)"
        for tag, name, fig in (
            ("test/samples", SAMPLES_PNG, figures.samples(images, labels, predicted)),
            ("test/confusion_matrix", CONFUSION_PNG, figures.confusion(matrix, title)),
        ):
            self.writer.add_image(tag, figures.to_rgb(fig), step, dataformats="HWC")
            atomic_write(self.run_dir / name, figures.to_png(fig))

    def final(self, metrics: dict[str, Any], hparams: dict[str, str | float], commit: Callable[[], None]) -> None:
        """Log the best model's valid and test scalars and the run's hparams; call `commit` (it may raise: a stop
        signal that came until then, so that the run is not recorded completed), then write metrics.json."""
        step = metrics["best_epoch"]
        for tag, key in METRIC_TAGS.items():
            self.writer.add_scalar(tag, metrics[key], step)
        if metrics["stopped_early"] is not None:
            self.writer.add_scalar("early_stop/epoch", metrics["stopped_early"], metrics["stopped_early"])
        # The run's hparams go into its own event file (add_hparams would open a second run). No experiment
        # summary: TensorBoard then builds the HPARAMS table from all runs' hparams and lists first those
        # that differ between them (with one, it would show the first run's keys, none marked as differing).
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        _, session_start, session_end = hparams_summaries(hparams, {})
        file_writer = self.writer.file_writer
        assert file_writer is not None  # SummaryWriter makes it when made; None only once closed
        for summary in (session_start, session_end):
            file_writer.add_summary(summary, step)
        self.writer.close()
        commit()
        atomic_write(self.run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def epoch_line(row: dict[str, float]) -> str:
    """An epoch's metrics for the log, accuracies in percent as people read them: `train_loss 0.4696  train_acc
    83.26%  ...  1.15s`."""
    return "  ".join(
        [
            *(
                f"{key} {100 * row[key]:.2f}%" if key.endswith("acc") else f"{key} {row[key]:.4g}"
                for key in EPOCH_METRICS
            ),
            f"{row['epoch_seconds']:.2f}s",
        ]
    )


def hparams(cfg: DictConfig, overrides: list[str]) -> dict[str, str | float]:
    """What TensorBoard's HPARAMS tab compares: the job's overrides and a fixed list of config values.

    Every run logs exactly these keys with these types, whatever its overrides, so that the runs of a sweep
    (and of several sweeps) fill the same columns of one table.
    """
    return {
        "overrides": ",".join(overrides),
        "model": str(cfg.model._target_).rpartition(".")[2],
        "optimizer": str(cfg.optimizer._target_).rpartition(".")[2],
        "optimizer.lr": float(cfg.optimizer.lr),
        "optimizer.weight_decay": float(cfg.optimizer.weight_decay),
        "scheduler": str(cfg.scheduler._target_).rpartition(".")[2],
        "early_stop.patience": str(cfg.early_stop.patience),  # "None" or a number: one type for every run
        "reg.l2": float(cfg.reg.l2),
        "reg.input_dropout": float(cfg.reg.input_dropout),
        "reg.dropout": float(cfg.reg.dropout),
        "aug.hflip": float(cfg.aug.hflip),
        "aug.degrees": float(cfg.aug.degrees),
        "aug.translate": float(cfg.aug.translate),
        "batch_size": float(cfg.batch_size),
        "epochs": float(cfg.epochs),
        "seed": float(cfg.seed),
        "data.normalize": str(cfg.data.normalize),
        "data.valid_ratio": float(cfg.data.valid_ratio),
        "data.subset": str(cfg.data.subset),  # "None" or a number: one type for every run
    }


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """metrics.json of a run, or None when it has none (yet)."""
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def completed(run_dir: Path) -> bool:
    """Whether the run finished and wrote its final metrics: completed, or pruned by a search."""
    return (read_metrics(run_dir) or {}).get("status") in ("completed", "pruned")


def record_end(run_dir: Path, status: str, error: str) -> None:
    """Write metrics.json of a run that ended without its final metrics: its status and why, under `error`;
    unless it already holds a completed result."""
    if run_dir.is_dir() and not completed(run_dir):
        with contextlib.suppress(UserError):  # the disk may be what failed; the error is reported anyway
            atomic_write(run_dir / "metrics.json", json.dumps({"status": status, "error": error}, indent=2) + "\n")


def record_failure(run_dir: Path, exc: BaseException) -> None:
    """Mark a run as failed in metrics.json, unless it already holds a completed result."""
    record_end(run_dir, "failed", f"{type(exc).__name__}: {exc}")


def record_cancelled(run_dir: Path, signum: int, stopped_at: str) -> None:
    """Mark a run that a cancel stopped (train.RunState.stopped_at says where) as cancelled in metrics.json, unless
    it already holds a completed result: `cancelled by SIGTERM (scancel) in epoch 3 of 10; last.pt saved: resume
    to finish it`. Resuming it writes its final metrics over this, as for any unfinished run."""
    by = signal.Signals(signum).name + (" (scancel)" if "SLURM_JOB_ID" in os.environ else "")
    record_end(run_dir, "cancelled", f"cancelled by {by} {stopped_at}")
