"""Runs composed through Hydra's compose API, as `python -m fmsweep <overrides>` would compose them: each model
learns, the regularizers do what their formulas say, augmentation and normalization act where they should."""

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
import torch
from conftest import CONF, ROOT, fast_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import fmsweep
from fmsweep import checkpoint, train
from fmsweep.augment import FlipAffine
from fmsweep.config import device_name
from fmsweep.data import prepare
from fmsweep.schedule import Constant

SCALARS = {"train/loss", "train/acc", "valid/loss", "valid/acc", "lr", "test/loss", "test/acc"}
CPU = torch.device("cpu")


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def read_history(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


# Test accuracy each model must reach in 3 epochs on the clear data set (chance: 0.1); measured there:
# linear 1.0, fc 1.0, vanilla_cnn 0.94, fancy_cnn 0.93.
FLOORS = {"linear": 0.9, "fc": 0.9, "vanilla_cnn": 0.7, "fancy_cnn": 0.7}


@pytest.mark.parametrize("model", FLOORS)
def test_each_model_learns_and_writes_every_artifact(
    make_cfg, clear_data_root: Path, tmp_path: Path, model: str
) -> None:
    best_valid_loss = train.run(make_cfg(f"data.root={clear_data_root}", f"model={model}", "epochs=3"), tmp_path)

    metrics, history = read_metrics(tmp_path), read_history(tmp_path)
    assert metrics["test_acc"] >= FLOORS[model] and metrics["valid_acc"] >= FLOORS[model]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # the best model is the epoch of the lowest valid loss, and its re-evaluation gives that loss again
    valid_losses = [row["valid_loss"] for row in history]
    assert metrics["best_epoch"] == 1 + valid_losses.index(min(valid_losses))
    assert metrics["valid_loss"] == best_valid_loss == pytest.approx(min(valid_losses), rel=1e-5)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert all(row["epoch_seconds"] > 0 for row in history) and metrics["train_seconds"] >= sum(
        row["epoch_seconds"] for row in history
    ) * (1 - 1e-9)
    summary = (tmp_path / "summary.txt").read_text()
    assert f"Trainable parameters: {metrics['num_params']}" in summary
    assert metrics["num_params"] == sum(
        p.numel()
        for p in checkpoint.load(tmp_path / checkpoint.BEST)["state_dict"].values()
        if p.dtype.is_floating_point
    ) - buffers(model)

    best = checkpoint.load(tmp_path / checkpoint.BEST)
    assert best["epoch"] == metrics["best_epoch"] and best["metrics"] == history[best["epoch"] - 1]
    last = checkpoint.load(tmp_path / checkpoint.LAST)
    assert last["epoch"] == 3 and last["history"] == history
    assert all(torch.equal(best["state_dict"][k], last["best_state"][k]) for k in best["state_dict"])

    events = EventAccumulator(str(tmp_path)).Reload()
    assert set(events.Tags()["scalars"]) >= SCALARS
    assert [(e.step, e.value) for e in events.Scalars("valid/loss")] == [
        (row["epoch"], pytest.approx(row["valid_loss"], rel=1e-6)) for row in history
    ]
    assert events.Scalars("test/acc")[0].value == pytest.approx(metrics["test_acc"])


def buffers(model: str) -> int:
    """Floating-point buffers (BatchNorm running statistics) in a state dict: not parameters."""
    return (
        sum(
            2 * m.num_features
            for m in checkpoint.build_network({"_target_": f"fmsweep.models.{name}"}).modules()
            if isinstance(m, torch.nn.BatchNorm2d)
        )
        if (name := {"fancy_cnn": "FancyCNN"}.get(model))
        else 0
    )


def test_same_seed_gives_the_same_run_and_another_seed_another(make_cfg, tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train.run(make_cfg("model=fc", "epochs=3", f"seed={seed}"), tmp_path / name)
    a, b, c = (read_metrics(tmp_path / name) for name in "abc")
    assert a["test_acc"] > 0.9  # chance is 0.1
    a.pop("train_seconds"), b.pop("train_seconds"), c.pop("train_seconds")
    assert a == b
    weights = {name: checkpoint.load(tmp_path / name / checkpoint.LAST)["state_dict"] for name in "abc"}
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not any(torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])  # init, split, order differ
    assert a["valid_loss"] != c["valid_loss"]


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
    assert [row["epoch"] for row in read_history(tmp_path / "resumed")] == [1, 2, 3]
    # the first run's final scalars (at its epoch 1) are gone: each tag once per epoch, the finals once
    events = EventAccumulator(str(tmp_path / "resumed")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("test/acc")] == [resumed["best_epoch"]]


def one_sgd_step(make_cfg, *overrides: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A small FancyCNN (conv kernels, BatchNorm, a linear layer with bias) before and after one train step
    of plain SGD (lr 0.1) on a fixed batch, from a fixed initialization."""
    cfg = make_cfg(
        "model=fancy_cnn",
        "model.channels=[4,8,8]",
        "optimizer=sgd",
        "optimizer.momentum=0",
        "optimizer.nesterov=false",
        "optimizer.lr=0.1",
        *overrides,
    )
    data = prepare(cfg.data, cfg.seed, CPU)
    model, optimizer = train.build(cfg, data)
    before = {name: p.detach().clone() for name, p in model.net.named_parameters()}
    run = SimpleNamespace(cfg=cfg, model=model, optimizer=optimizer, generator=torch.Generator(), schedule=Constant())
    x = model.normalize(data.train_x[:32])
    train.PackStep([cast(train.RunState, run)], False, 1)(x[None], data.train_y[None, :32])  # the parts it uses
    return before, {name: p.detach().clone() for name, p in model.net.named_parameters()}


def test_l2_adds_twice_its_coefficient_times_each_weight_to_its_gradient_and_nothing_to_biases_or_batchnorm(
    make_cfg,
) -> None:
    """reg.l2 = λ adds λ·Σw² over kernels and matrices to the loss: one SGD step moves each such weight by an
    extra -lr·2λ·w, and biases and BatchNorm parameters not at all (a wrong sign or factor fails here)."""
    w0, plain = one_sgd_step(make_cfg)
    _, penalized = one_sgd_step(make_cfg, "reg.l2=0.5")
    kinds = {name: w0[name].ndim for name in w0}
    assert {2, 4} <= set(kinds.values()) and 1 in kinds.values()  # kernels, a matrix, biases and BatchNorm
    for name, w in w0.items():
        expected = -0.1 * 2 * 0.5 * w if w.ndim >= 2 else torch.zeros_like(w)
        torch.testing.assert_close(penalized[name] - plain[name], expected, rtol=1e-4, atol=1e-6, msg=name)


def test_weight_decay_reaches_the_optimizer_and_shrinks_every_parameter(make_cfg, tmp_path: Path) -> None:
    """optimizer.weight_decay = d is torch's: SGD adds d·p to every parameter's gradient (biases included)."""
    w0, plain = one_sgd_step(make_cfg)
    _, decayed = one_sgd_step(make_cfg, "optimizer.weight_decay=0.5")
    for name, w in w0.items():
        torch.testing.assert_close(decayed[name] - plain[name], -0.1 * 0.5 * w, rtol=1e-4, atol=1e-6, msg=name)
    # and over a run: AdamW's decoupled decay leaves clearly smaller weights
    norms = {}
    for decay in (0, 10):
        train.run(
            make_cfg("model=fc", "optimizer=adamw", f"optimizer.weight_decay={decay}", "epochs=3"),
            tmp_path / str(decay),
        )
        weights = checkpoint.load(tmp_path / str(decay) / checkpoint.LAST)["state_dict"]
        norms[decay] = torch.sqrt(sum(w.pow(2).sum() for w in weights.values())).item()
    assert norms[10] < 0.85 * norms[0]  # 39 steps of p *= 1 - lr·d = 0.99 give 0.68


def test_augmentation_touches_every_training_image_and_nothing_else(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each epoch augments each training image once, in training batches; validation and test images never."""
    augmented: list[int] = []
    apply = FlipAffine.apply

    def spy(self: FlipAffine, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        augmented.append(len(x))
        return apply(self, x, params)

    monkeypatch.setattr(FlipAffine, "apply", spy)
    train.run(make_cfg("model=fc", "aug=flip_affine", "epochs=2"), tmp_path / "aug")
    assert sum(augmented) == 2 * 400 and set(augmented) == {32, 400 % 32}  # 400 training images, batches of 32
    augmented.clear()
    train.run(make_cfg("model=fc", "epochs=2"), tmp_path / "none")
    assert augmented == []
    weights = [checkpoint.load(tmp_path / d / checkpoint.LAST)["state_dict"] for d in ("aug", "none")]
    assert not torch.equal(weights[0]["classifier.1.weight"], weights[1]["classifier.1.weight"])


@pytest.mark.parametrize("kind", ["pixel", "global", "none"])
def test_each_normalization_is_computed_on_the_train_split_and_travels_with_the_model(
    make_cfg, clear_data_root: Path, tmp_path: Path, kind: str
) -> None:
    cfg = make_cfg(f"data.root={clear_data_root}", "model=linear", f"data.normalize={kind}", "epochs=3")
    train.run(cfg, tmp_path)
    pixels = prepare(cfg.data, cfg.seed, CPU).train_x.float() / 255
    expected = {
        "pixel": (pixels.mean(0), pixels.std(0)),
        "global": (pixels.mean(), pixels.std()),
        "none": (torch.tensor(0.0), torch.tensor(1.0)),
    }[kind]
    saved = checkpoint.load(tmp_path / checkpoint.BEST)["normalization"]
    assert saved["kind"] == kind
    torch.testing.assert_close(saved["mean"], expected[0])
    torch.testing.assert_close(saved["std"], torch.where(expected[1] == 0, 1.0, expected[1]))
    metrics = read_metrics(tmp_path)
    assert metrics["test_acc"] > 0.8  # measured: pixel 1.0, global 1.0, none 0.925 (uncentred inputs learn slower)
    _, _, test_x, test_y = fmsweep.data.load_fashion_mnist(clear_data_root, download=False)
    accuracy = (fmsweep.load_model(tmp_path)(test_x).argmax(1) == test_y).float().mean().item()
    assert accuracy == pytest.approx(metrics["test_acc"], abs=1e-6)


def test_load_model_predicts_raw_images(make_cfg, data_root: Path, tmp_path: Path) -> None:
    train.run(make_cfg("model=vanilla_cnn"), tmp_path)
    model = fmsweep.load_model(tmp_path)
    assert not model.training
    _, _, test_x, test_y = fmsweep.data.load_fashion_mnist(data_root, download=False)
    with torch.no_grad():
        logits = model(test_x)
    acc = (logits.argmax(1) == test_y).float().mean().item()
    assert acc == pytest.approx(read_metrics(tmp_path)["test_acc"], abs=1e-6)
    torch.testing.assert_close(model(test_x[0]), logits[:1])
    torch.testing.assert_close(model(test_x[:5].float() / 255), logits[:5])


PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_every_experiment_preset_runs_through_the_command_line(data_root: Path, tmp_path: Path, preset: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fmsweep",
            f"experiment={preset}",
            *fast_overrides(data_root),
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_metrics(tmp_path)["status"] == "completed"
    model = fmsweep.load_model(tmp_path)
    assert model(torch.zeros(2, 28, 28, dtype=torch.uint8)).shape == (2, 10)


def test_the_start_line_says_a_job_given_gpus_that_cuda_cannot_use_trains_on_the_cpu(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A SLURM job that asked for a GPU gets CUDA_VISIBLE_DEVICES; where CUDA cannot use it (no driver, as on the
    test cluster's GPUs faked as GRES) device=auto trains on the CPU, and the run's start line says why."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    caplog.set_level(logging.INFO, logger="fmsweep.train")
    train.run(make_cfg("model=linear", "device=auto"), tmp_path)
    [line] = [record.getMessage() for record in caplog.records if " | device " in record.getMessage()]
    cpu = device_name(CPU)
    fallback = "CUDA_VISIBLE_DEVICES=0 set but CUDA is not available: training on the CPU"
    assert f" | device cpu ({cpu}; {fallback}) | " in line
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the GPUs hidden on purpose: nothing to say
    assert train.device_text(CPU) == f"cpu ({cpu})"
