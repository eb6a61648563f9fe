"""What a run records: TensorBoard events, summary.txt, history.csv and metrics.json."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from fmsweep.files import atomic_write

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "epoch_seconds")


class Tracker:
    """Writes a run's records into its directory; every file is replaced atomically."""

    def __init__(self, run_dir: Path, resumed_epoch: int) -> None:
        self.run_dir = run_dir
        # On resume, drop events a killed process logged after its last checkpoint.
        self.writer = SummaryWriter(str(run_dir), purge_step=resumed_epoch + 1 if resumed_epoch else None)

    def summary(self, text: str) -> None:
        atomic_write(self.run_dir / "summary.txt", text)
        self.writer.add_text("summary", "```\n" + text + "\n```")

    def epoch(self, history: list[dict[str, float]]) -> None:
        """Log the newest history row as scalars and rewrite history.csv."""
        row = history[-1]
        for split in ("train", "valid"):
            self.writer.add_scalar(f"{split}/loss", row[f"{split}_loss"], row["epoch"])
            self.writer.add_scalar(f"{split}/acc", row[f"{split}_acc"], row["epoch"])
        self.writer.add_scalar("lr", row["lr"], row["epoch"])
        self.writer.flush()
        out = io.StringIO()
        writer = csv.DictWriter(out, HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)
        atomic_write(self.run_dir / "history.csv", out.getvalue())

    def final(self, metrics: dict[str, Any]) -> None:
        """Log the test scalars and write metrics.json."""
        self.writer.add_scalar("test/loss", metrics["test_loss"], metrics["best_epoch"])
        self.writer.add_scalar("test/acc", metrics["test_acc"], metrics["best_epoch"])
        self.writer.close()
        atomic_write(self.run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
