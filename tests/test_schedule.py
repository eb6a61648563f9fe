"""Learning-rate schedules against torch's own schedulers, stepped per batch in real runs and resumed exactly;
early stopping."""

import csv
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_crash import SignalledSteps, assert_consistent, assert_same_result

from fmsweep import checkpoint, schedule, train
from fmsweep.errors import Interrupted
from fmsweep.results.runs import find_runs

STEPS, EPOCHS = 7, 6  # batches per epoch, epochs


def factors(sched: Any) -> list[float]:
    return [sched.factor(torch.tensor(float(t)), STEPS, EPOCHS).item() for t in range(STEPS * EPOCHS)]


def torch_lrs(make: Callable[[torch.optim.Optimizer], Any], per_batch: bool = True) -> list[float]:
    """The lr torch's scheduler gives each batch, for a base lr of 1."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make(optimizer)
    lrs = []
    for t in range(STEPS * EPOCHS):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if per_batch or (t + 1) % STEPS == 0:
            scheduler.step()
    return lrs


def test_schedules_follow_torchs_schedulers() -> None:
    total = STEPS * EPOCHS
    assert factors(schedule.Constant()) == [1.0] * total
    assert factors(schedule.Cosine()) == pytest.approx(
        torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total)), abs=1e-6
    )
    assert factors(schedule.OneCycle()) == pytest.approx(
        torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=total)), abs=1e-6
    )
    assert factors(schedule.MultiStep([2, 4], 0.5)) == pytest.approx(
        torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [1, 3], 0.5), per_batch=False)
    )  # epochs 2, 4
    warm = factors(schedule.Cosine(warmup_epochs=1, final=0.1))
    assert warm[:STEPS] == pytest.approx([(t + 1) / STEPS for t in range(STEPS)])  # linear warm-up to the full lr
    assert warm[STEPS] == pytest.approx(1.0) and warm[-1] == pytest.approx(0.1, abs=0.01)
    assert all(a >= b for a, b in zip(warm[STEPS:], warm[STEPS + 1 :]))


def test_a_run_steps_its_schedule_every_batch_and_records_it(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("model=fc", "scheduler=onecycle", "epochs=3", "optimizer.lr=0.01")
    train.run(cfg, tmp_path)
    batches = 13  # 400 training images in batches of 32
    expected = [
        0.01 * schedule.OneCycle().factor(torch.tensor(float(e * batches - 1)), batches, 3).item() for e in (1, 2, 3)
    ]
    with open(tmp_path / "history.csv") as f:
        lrs = [float(row["lr"]) for row in csv.DictReader(f)]
    assert lrs == pytest.approx(expected, rel=1e-5)  # the lr of each epoch's last batch
    assert [e.value for e in EventAccumulator(str(tmp_path)).Reload().Scalars("lr")] == pytest.approx(
        expected, rel=1e-5
    )
    assert lrs[0] > lrs[2] and max(lrs) <= 0.01
    summary = (tmp_path / "summary.txt").read_text()
    assert (
        "Learning-rate schedule: OneCycle (pct_start=0.3, div_factor=25.0, final_div_factor=10000.0) of "
        "optimizer.lr=0.01"
        in summary
        and "tensor(" not in summary
    )


def test_a_scheduled_run_resumes_bitwise(make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make_cfg("model=fc", "scheduler=cosine", "scheduler.warmup_epochs=1", "epochs=3")
    train.run(cfg, tmp_path / "straight")
    SignalledSteps(monkeypatch, {6: signal.SIGINT, 20: signal.SIGINT})  # in the warm-up, in the decay
    for _ in range(2):
        with pytest.raises(Interrupted):
            train.run(cfg, tmp_path / "resumed")
        assert_consistent(tmp_path / "resumed")
    train.run(cfg, tmp_path / "resumed")
    assert_same_result(tmp_path / "straight", tmp_path / "resumed")


def test_early_stopping_ends_a_run_that_stopped_improving(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("model=fc", "epochs=6", "early_stop.patience=1", "early_stop.min_delta=10")  # nothing is enough
    train.run(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["stopped_early"] == 2 and metrics["epochs_run"] == 2
    events = EventAccumulator(str(tmp_path)).Reload()
    assert [(e.step, e.value) for e in events.Scalars("early_stop/epoch")] == [(2, 2.0)]
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")  # as Hydra writes it: the report reads the run
    assert [run.status for run in find_runs(tmp_path)] == ["completed (early stop at epoch 2)"]
    modified = (tmp_path / "metrics.json").stat().st_mtime_ns
    train.run(cfg, tmp_path)  # finished: nothing to train again
    assert (tmp_path / "metrics.json").stat().st_mtime_ns == modified
    train.run(make_cfg("model=fc", "epochs=6", "early_stop.patience=3", "optimizer.lr=3e-4"), tmp_path / "improving")
    assert json.loads((tmp_path / "improving" / "metrics.json").read_text())["stopped_early"] is None


def test_early_stopping_counts_on_across_a_resume(make_cfg, tmp_path: Path) -> None:
    """The epochs without improvement are part of last.pt: a run continued one epoch before its stop, with one epoch
    without improvement counted, stops where the same run uninterrupted stops, with the same result."""
    settings = ("model=fc", "early_stop.patience=2", "early_stop.min_delta=0.05")
    train.run(make_cfg(*settings, "epochs=8"), tmp_path / "straight")
    stopped = json.loads((tmp_path / "straight" / "metrics.json").read_text())["stopped_early"]
    assert stopped is not None and stopped > 2
    train.run(make_cfg(*settings, f"epochs={stopped - 1}"), tmp_path / "resumed")
    assert checkpoint.load(tmp_path / "resumed" / checkpoint.LAST)["stale"] == 1  # a count that a resume must keep
    train.run(make_cfg(*settings, "epochs=8"), tmp_path / "resumed")
    assert_same_result(tmp_path / "straight", tmp_path / "resumed")


def test_a_member_that_stops_early_leaves_its_pack_training(make_cfg, tmp_path: Path) -> None:
    configs = [
        make_cfg("model=fc", "epochs=4", "early_stop.patience=1", "early_stop.min_delta=10", "stack=true"),
        make_cfg("model=fc", "epochs=4", "seed=1", "stack=true"),
    ]
    train.run_pack(configs, [tmp_path / "stops", tmp_path / "trains"])
    stops, trains = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("stops", "trains"))
    assert stops["stopped_early"] == 2 and stops["epochs_run"] == 2
    assert trains["epochs_run"] == 4 and trains["status"] == "completed"
