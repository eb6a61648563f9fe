"""Runs composed through Hydra's compose API, as `python -m fmsweep <overrides>` would compose them."""
import csv
import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import fmsweep
from conftest import CONF
from hydra import compose, initialize_config_dir
from fmsweep import checkpoint, train

SCALARS = {"train/loss", "train/acc", "valid/loss", "valid/acc", "lr", "test/loss", "test/acc"}


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.parametrize("model", ["linear", "fc", "vanilla_cnn", "fancy_cnn"])
def test_each_model_trains_and_writes_every_artifact(make_cfg, tmp_path: Path, model: str) -> None:
    cfg = make_cfg(f"model={model}", "epochs=2", "data.subset=200")
    best_valid_loss = train.run(cfg, tmp_path)

    metrics = read_metrics(tmp_path)
    assert metrics["valid_loss"] == best_valid_loss
    assert set(metrics) >= {"best_epoch", "valid_loss", "valid_acc", "test_loss", "test_acc", "num_params",
                            "train_seconds", "epochs_run"}
    assert metrics["epochs_run"] == 2 and metrics["best_epoch"] in (1, 2)
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["epoch_seconds"]) > 0 and float(r["lr"]) == 1e-3 for r in rows)
    summary = (tmp_path / "summary.txt").read_text()
    assert "Trainable parameters: " + str(metrics["num_params"]) in summary and "Adam" in summary

    best = checkpoint.load(tmp_path / checkpoint.BEST)
    assert best["epoch"] == metrics["best_epoch"] and best["model_config"]["_target_"].startswith("fmsweep.models.")
    assert set(best["normalization"]) == {"kind", "mean", "std"}
    last = checkpoint.load(tmp_path / checkpoint.LAST)
    assert last["epoch"] == 2 and "optimizer" in last and "rng_cpu" in last

    events = EventAccumulator(str(tmp_path)).Reload()
    assert SCALARS <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("valid/loss")] == [1, 2]
    assert events.Scalars("test/acc")[0].value == pytest.approx(metrics["test_acc"])


def test_fc_learns_and_same_seed_gives_same_metrics(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("model=fc", "epochs=3")
    train.run(cfg, tmp_path / "a")
    train.run(cfg, tmp_path / "b")
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert a["test_acc"] > 0.5  # chance is 0.1
    for key in ("valid_loss", "valid_acc", "test_loss", "test_acc", "best_epoch"):
        assert a[key] == b[key]


def test_resumed_run_ends_like_an_uninterrupted_one(make_cfg, tmp_path: Path) -> None:
    overrides = ("model=fc", "reg=dropout", "aug=flip_affine")
    train.run(make_cfg(*overrides, "epochs=3"), tmp_path / "straight")
    train.run(make_cfg(*overrides, "epochs=1"), tmp_path / "resumed")  # stops after epoch 1, leaving last.pt
    train.run(make_cfg(*overrides, "epochs=3"), tmp_path / "resumed")
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    for key in ("valid_loss", "valid_acc", "test_loss", "test_acc", "best_epoch", "epochs_run"):
        assert straight[key] == resumed[key]
    weights = [checkpoint.load(tmp_path / d / checkpoint.LAST)["state_dict"] for d in ("straight", "resumed")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    with open(tmp_path / "resumed" / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]


def test_l2_and_weight_decay_change_training(make_cfg, tmp_path: Path) -> None:
    train.run(make_cfg("model=fc"), tmp_path / "plain")
    train.run(make_cfg("model=fc", "reg.l2=1e-2"), tmp_path / "l2")
    assert read_metrics(tmp_path / "plain")["valid_loss"] != read_metrics(tmp_path / "l2")["valid_loss"]


def test_load_model_predicts_raw_images(make_cfg, data_root: Path, tmp_path: Path) -> None:
    train.run(make_cfg("model=vanilla_cnn"), tmp_path)
    model = fmsweep.load_model(tmp_path)
    assert not model.training
    _, _, test_x, test_y = fmsweep.data.load_fashion_mnist(data_root, download=False)
    with torch.no_grad():
        logits = model(test_x)
    acc = (logits.argmax(1) == test_y).float().mean().item()
    assert acc == pytest.approx(read_metrics(tmp_path)["test_acc"], abs=1e-6)
    assert model(test_x[0]).shape == (1, 10)


def test_experiment_presets_compose(make_cfg) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=fancy_cnn_aug"])
    assert cfg.model._target_.endswith("FancyCNN") and cfg.aug.hflip == 0.5
    assert cfg.optimizer.weight_decay == 1e-6 and cfg.epochs == 50
    cfg = make_cfg("experiment=fc_dropout")
    assert cfg.model.input_dropout == 0.2 and cfg.model.dropout == 0.5
    assert make_cfg("experiment=fc_l2").reg.l2 > 0
