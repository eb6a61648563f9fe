"""Packed training: which jobs pack together, packed runs against their unpacked twins, a pack that stops, falls
behind in part or loses a member, and packed sweeps through the real command line."""

import copy
import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT, Gate, make_fashion_root
from omegaconf import DictConfig
from test_crash import (
    CLOSE_LOSSES,
    SignalledSteps,
    assert_close_records,
    assert_close_result,
    assert_close_weights,
    assert_consistent,
    assert_same_result,
    final_state,
    relative_distance,
)

from fmsweep import checkpoint, train
from fmsweep.data import load_fashion_mnist
from fmsweep.errors import Interrupted
from fmsweep.models import seed_dropout
from fmsweep.results.runs import find_runs, read_overrides
from fmsweep.sweep import packing

CNN = ("model=fancy_cnn", "model.channels=[4,8,8]")  # BatchNorm, small enough for CPU


def test_jobs_that_differ_only_in_free_settings_pack_together(make_cfg) -> None:
    configs = [
        make_cfg(*o, "pack=3")
        for o in (
            ["model=fc", "seed=0"],
            ["model=fc", "seed=1", "optimizer.lr=0.01", "reg.l2=1e-4", "scheduler=cosine", "early_stop.patience=2"],
            ["model=linear"],
            ["model=fc", "seed=2", "aug=flip_affine"],
            ["model=fc", "seed=3", "aug=flip_affine", "aug.degrees=5"],
            ["model=fc", "seed=4"],
            ["model=fc", "seed=5"],
            ["model=fc", "epochs=2"],
            ["model=fc", "optimizer=sgd"],
            ["model=fc", "reg=dropout"],
        )
    ]
    # seeds, lr, l2, schedules, early stopping and augmentation settings (aug=none is flip_affine at zero) are the
    # members' own; the model,
    # epochs, optimizer class and dropout (it is part of the model) are not; a pack holds at most `pack` jobs
    assert packing.plan(configs) == [[0, 1, 3], [2], [4, 5, 6], [7], [8], [9]]
    assert packing.plan([make_cfg("seed=0"), make_cfg("seed=1")]) == [[0], [1]]  # pack=1: every job alone


@pytest.mark.parametrize("model", [("model=fc",), CNN], ids=["fc", "cnn_with_batchnorm"])
def test_a_packed_run_equals_its_unpacked_twin(make_cfg, tmp_path: Path, model: tuple[str, ...]) -> None:
    """Each member of a pack (own seed, lr, l2) ends bitwise where the same config ends alone: weights after
    every epoch, optimizer state, best model, metrics and history."""
    settings = [("seed=0",), ("seed=1", "optimizer.lr=0.003"), ("seed=2", "reg.l2=1e-3")]
    configs = [make_cfg(*model, "aug=flip_affine", "epochs=2", *s) for s in settings]
    dirs = [tmp_path / f"packed{i}" for i in range(3)]
    for i, cfg in enumerate(configs):
        train.run(cfg, tmp_path / f"alone{i}")
    train.run_pack(configs[:1], [tmp_path / "single"])  # a pack of one is a lone run
    assert_same_result(tmp_path / "alone0", tmp_path / "single")
    train.run_pack(configs, dirs)
    for i in range(3):
        assert_same_result(tmp_path / f"alone{i}", dirs[i])
        packed, alone = (checkpoint.load(d / checkpoint.LAST) for d in (dirs[i], tmp_path / f"alone{i}"))
        assert packed["optimizer"]["state"].keys() == alone["optimizer"]["state"].keys()
        for key, state in alone["optimizer"]["state"].items():
            assert all(torch.equal(state[k], packed["optimizer"]["state"][key][k]) for k in state)


def test_the_stacked_step_computes_what_the_members_compute_one_by_one(make_cfg, tmp_path: Path) -> None:
    """The vmapped step (CUDA's, here on the CPU) against the one-by-one step: same losses, same weights and
    BatchNorm statistics after a few SGD steps, within float32 rounding (grouped convolutions sum in another order)."""
    configs = [make_cfg(*CNN, "optimizer=sgd", f"seed={s}", f"optimizer.lr={lr}") for s, lr in ((0, 0.05), (1, 0.02))]
    raw = load_fashion_mnist(configs[0].data.root, False)
    results = []
    for stacked in (False, True):
        pack = [
            train.RunState(cfg, tmp_path / f"{stacked}{i}", torch.device("cpu"), raw, "")
            for i, cfg in enumerate(configs)
        ]
        for run in pack:
            run.model.train()
        loader = train.TrainLoader([run.source() for run in pack], 32)
        step = train.PackStep(pack, stacked, loader.num_batches)
        loader.plan()
        losses = [step(x, y)[0] for _, (_, x, y) in zip(range(4), loader.batches())]
        results.append((torch.stack(losses), [run.model.net.state_dict() for run in pack]))
    (losses_a, states_a), (losses_b, states_b) = results
    for k, (a, b) in enumerate(zip(states_a, states_b)):
        assert relative_distance(losses_a[:, k], losses_b[:, k]) <= CLOSE_LOSSES
        assert_close_weights(a, b)
    assert not torch.equal(states_a[0]["features.1.running_mean"], states_a[1]["features.1.running_mean"])


def stacked_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the number of members of every vmapped step from now on."""
    sizes: list[int] = []
    forward = train.PackStep.forward

    def recording(self: train.PackStep, x: torch.Tensor) -> torch.Tensor:
        if self.vmapped is not None:
            sizes.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(train.PackStep, "forward", recording)
    return sizes


# The models of the stacked packs below, with their members' two lrs (Adam), a tenth of the defaults: at 1e-3 and 3e-3
# Adam is chaotic on this tiny data (a gradient near zero takes an lr-sized step of the sign that rounding gives it,
# and the difference then grows by a factor of 1.2 to 1.6 a step), and within the 26 steps rounding grew as far as a
# swapped dropout stream does (whole net, relative norm: up to 4.5e-2 against 0.30 for the MLP, 12 members; 1.7e-2
# against 3.6e-2 for the CNN, 24 members). At 1e-4 and 3e-4: test_crash.CLOSE_WEIGHTS.
STACKED = {
    "fc": (("model=fc", "reg=dropout"), "1e-4", "3e-4"),
    "cnn_with_batchnorm": ((*CNN, "reg.dropout=0.3"), "1e-4", "3e-4"),
}


def stacked_members(make_cfg, model: str) -> list[DictConfig]:
    """Three members of a stacked pack of `model` (STACKED), each with its own seed (data order, dropout stream), lr,
    L2, schedule and augmentation settings."""
    overrides, lr, other_lr = STACKED[model]
    settings = [
        ("seed=0", f"optimizer.lr={lr}"),
        ("seed=1", f"optimizer.lr={other_lr}", "reg.l2=1e-3"),
        ("seed=2", f"optimizer.lr={lr}", "scheduler=cosine", "scheduler.warmup_epochs=1", "aug.degrees=5"),
    ]
    return [make_cfg(*overrides, "aug=flip_affine", "epochs=2", "stack=true", *s) for s in settings]


@pytest.mark.parametrize("model", list(STACKED))
def test_a_stacked_pack_trains_each_member_as_it_trains_alone(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    """stack=true on the CPU (CUDA's path of a pack): each member (own seed, lr, L2, schedule, augmentation
    settings; dropout) ends where it ends trained alone through its own module, within float32 rounding, epoch by
    epoch: weights, best model, history and metrics."""
    configs = stacked_members(make_cfg, model)
    sizes = stacked_steps(monkeypatch)
    train.run_pack(configs, [tmp_path / f"packed{i}" for i in range(3)])
    assert sizes == [3] * 26  # every step of both epochs vmapped over the three members
    for i, cfg in enumerate(configs):
        train.run(cfg, tmp_path / f"alone{i}")
        assert_close_result(tmp_path / f"alone{i}", tmp_path / f"packed{i}")
    assert len(sizes) == 26  # the lone runs trained through their modules


@pytest.mark.parametrize("model", list(STACKED))
def test_a_stacked_member_fails_the_comparison_with_a_twin_given_another_members_lr_dropout_stream_or_batches(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    """The negative control of the test above and its tolerances (test_crash): member 0 of the stacked pack, against
    lone twins given member 1's lr, dropout stream (dropout keyed by its seed, all else member 0's) or data order and
    augmentation (its generator seeded by member 1's seed), as a stacked step that mixed up its members would do,
    fails on its weights and on its records."""
    first, second = stacked_members(make_cfg, model)[:2]
    train.run_pack([first, second], [tmp_path / "packed0", tmp_path / "packed1"])
    other_lr = copy.deepcopy(first)
    other_lr.optimizer.lr = second.optimizer.lr
    train.run(other_lr, tmp_path / "lr")
    with monkeypatch.context() as patch:
        patch.setattr(train, "seed_dropout", lambda net, seed: seed_dropout(net, second.seed))
        train.run(first, tmp_path / "dropout_stream")
    init = train.RunState.__init__

    def data_order_of_second(self: train.RunState, *args: Any) -> None:
        init(self, *args)
        self.generator.manual_seed(second.seed)

    with monkeypatch.context() as patch:
        patch.setattr(train.RunState, "__init__", data_order_of_second)
        train.run(first, tmp_path / "batches")
    packed = final_state(tmp_path / "packed0")[1]
    for swapped in ("lr", "dropout_stream", "batches"):
        with pytest.raises(AssertionError, match="weights"):
            assert_close_weights(final_state(tmp_path / swapped)[1], packed)
        with pytest.raises(AssertionError):
            assert_close_records(tmp_path / swapped, tmp_path / "packed0")


@pytest.mark.parametrize("leaves", ["early_stop", "pruned", "diverged"])
def test_a_member_that_leaves_a_stacked_pack_leaves_the_others_where_they_would_be(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, leaves: str
) -> None:
    """A member that stops early, is pruned or diverges leaves the pack; the others train on as if it had stayed:
    their dropout streams go on (none restarts when the smaller pack starts), and the batches they are stacked
    with do not change their own."""
    common = ("model=fc", "reg=dropout", "aug=flip_affine", "optimizer=sgd", "epochs=4", "stack=true")
    leaving = {
        "early_stop": ("early_stop.patience=1", "early_stop.min_delta=10"),
        "pruned": (),
        "diverged": ("reg.l2=1e38",),
    }[leaves]
    stays = [make_cfg(*common, f"seed={s}") for s in range(3)]
    train.run_pack(stays, [tmp_path / f"stays{i}" for i in range(3)])
    if leaves == "pruned":  # the search's pruner stops the trial in leaves0 after its first epoch
        monkeypatch.setattr(train.Trial, "of", lambda run_dir, epochs: Pruner() if run_dir.name == "leaves0" else None)
    sizes = stacked_steps(monkeypatch)
    losses = train.run_pack(
        [make_cfg(*common, "seed=0", *leaving), *stays[1:]], [tmp_path / f"leaves{i}" for i in range(3)]
    )
    left = json.loads((tmp_path / "leaves0" / "metrics.json").read_text())
    expected = {"early_stop": (2, "completed"), "pruned": (1, "pruned"), "diverged": (1, "failed")}[leaves]
    assert (left.get("epochs_run", 1), left["status"]) == expected and (losses[0] is None) == (leaves == "diverged")
    assert sizes == [3] * 13 * expected[0] + [2] * 13 * (4 - expected[0])
    for i in (1, 2):
        assert_close_result(tmp_path / f"stays{i}", tmp_path / f"leaves{i}")


class Pruner:
    """A search trial whose pruner stops it after epoch 1."""

    def prune(self, epoch: int, row: dict[str, float]) -> bool:
        return epoch == 1


@pytest.mark.parametrize("stack", [False, True], ids=["one_after_another", "stacked"])
def test_a_stopped_pack_resumes_every_member_bitwise(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack: bool
) -> None:
    together = stack
    configs = [
        make_cfg("model=fc", "reg=dropout", "aug=flip_affine", "epochs=3", f"seed={s}", f"stack={stack}")
        for s in (0, 1)
    ]
    straight = [tmp_path / f"straight{i}" for i in range(2)]
    resumed = [tmp_path / f"resumed{i}" for i in range(2)]
    train.run_pack(configs, straight)
    # 400 images in batches of 32: 13 steps an epoch. Together: mid-epoch 1, its last batch, mid-epoch 2;
    # one after another: the same for the first run, then mid-epoch 1 and the last batch of the second
    stops = (5, 13, 20) if together else (5, 13, 20, 45, 78)
    steps = SignalledSteps(monkeypatch, dict.fromkeys(stops, signal.SIGTERM))
    attempts = 0
    while True:
        try:
            train.run_pack(configs, resumed)
            break
        except Interrupted:
            attempts += 1
            positions = {
                (last["epoch"], (last["partial"] or {}).get("next"))
                for last in (checkpoint.load(d / checkpoint.LAST) for d in resumed if (d / checkpoint.LAST).exists())
            }
            if together:
                assert len(positions) == 1  # every member saved at the same batch
            for d in resumed:
                assert_consistent(d)
    assert attempts == len(stops) and steps.done == 3 * 13 * (1 if together else 2)  # no step twice
    for a, b in zip(straight, resumed):
        assert_same_result(a, b)


def test_members_left_behind_by_a_stop_while_saving_catch_up(make_cfg, tmp_path: Path) -> None:
    """An attempt killed between two members' last.pt leaves them an epoch apart: the next attempt trains the one
    behind alone up to the other, then both together; each ends as it would have uninterrupted."""
    configs = [make_cfg("model=fc", "epochs=3", f"seed={s}", "stack=true") for s in (0, 1)]
    straight = [tmp_path / f"straight{i}" for i in range(2)]
    dirs = [tmp_path / f"run{i}" for i in range(2)]
    train.run_pack(configs, straight)
    train.run_pack([make_cfg("model=fc", "epochs=1", f"seed={s}", "stack=true") for s in (0, 1)], dirs)
    behind = checkpoint.load(dirs[1] / checkpoint.LAST)
    train.run_pack([make_cfg("model=fc", "epochs=2", f"seed={s}", "stack=true") for s in (0, 1)], dirs)
    checkpoint.save(behind, dirs[1] / checkpoint.LAST)  # as if the attempt died after saving member 0's epoch 2
    for d in dirs:
        (d / "metrics.json").unlink()
    steps: list[int] = []
    step = train.PackStep.__call__
    monkeypatch = pytest.MonkeyPatch()

    def counted(self: train.PackStep, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        steps.append(len(x))
        return step(self, x, y)

    monkeypatch.setattr(train.PackStep, "__call__", counted)
    try:
        train.run_pack(configs, dirs)
    finally:
        monkeypatch.undo()
    assert steps == [1] * 13 + [2] * 13  # epoch 2 of the one behind alone, then epoch 3 of both together
    for a, b in zip(straight, dirs):  # alone through its module, stacked through vmap: float32 rounding apart
        assert_close_result(a, b)


def test_a_member_that_diverges_stops_alone(make_cfg, tmp_path: Path) -> None:
    configs = [
        make_cfg("model=fc", "optimizer=sgd", "epochs=2", "seed=0"),
        make_cfg("model=fc", "optimizer=sgd", "epochs=2", "seed=1", "reg.l2=1e38"),
    ]
    dirs = [tmp_path / "ok", tmp_path / "diverged"]
    losses = train.run_pack(configs, dirs)
    assert losses[0] is not None and losses[1] is None
    assert json.loads((dirs[0] / "metrics.json").read_text())["status"] == "completed"
    failed = json.loads((dirs[1] / "metrics.json").read_text())
    assert failed["status"] == "failed" and "training diverged" in failed["error"]
    train.run(make_cfg("model=fc", "optimizer=sgd", "epochs=2", "seed=0"), tmp_path / "alone")
    assert_same_result(tmp_path / "alone", dirs[0])


def sweep(data_root: Path, sweep_dir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "fmsweep",
        "-m",
        f"data.root={data_root}",
        "data.download=false",
        "device=cpu",
        "batch_size=64",
        "epochs=2",
        *args,
        f"hydra.sweep.dir={sweep_dir}",
    ]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_a_packed_sweep_writes_the_job_dirs_of_an_unpacked_one(data_root: Path, tmp_path: Path, launcher: str) -> None:
    jobs = ["model=linear,fc", "seed=0,1,2"]
    extra = [] if launcher == "basic" else ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    unpacked = sweep(data_root, tmp_path / "unpacked", *jobs)
    packed = sweep(data_root, tmp_path / "packed", *jobs, "pack=2", *extra)
    assert unpacked.returncode == 0 and packed.returncode == 0, packed.stderr
    assert "6 jobs in 4 launcher jobs (pack=2)" in packed.stdout
    names = [run.name for run in find_runs(tmp_path / "unpacked")]
    assert [run.name for run in find_runs(tmp_path / "packed")] == names  # same dirs, no pack among them
    # a lone job (2, 5) is launched as itself: only packs of two or more get a folder
    assert sorted(p.name for p in (tmp_path / "packed" / "packs").iterdir()) == ["0-1", "3-4"]
    for name in names:
        assert_same_result(tmp_path / "unpacked" / name, tmp_path / "packed" / name)
        assert read_overrides(tmp_path / "unpacked" / name) == read_overrides(tmp_path / "packed" / name)
        # a member's summary gives the command of its own training, not the sweep's
        summary_command = (tmp_path / "packed" / name / "summary.txt").read_text().splitlines()[1]
        assert summary_command.startswith("python -m fmsweep ") and "linear,fc" not in summary_command
        assert set(read_overrides(tmp_path / "packed" / name)) < set(shlex.split(summary_command))
    assert packed.stdout.count(" completed: valid loss ") == 6
    # the sweep ends naming its best setting on validation and its report
    assert (
        "fmsweep: best setting on validation: model=linear, mean valid loss" in packed.stdout
        or "fmsweep: best setting on validation: model=fc, mean valid loss" in packed.stdout
    )
    assert (
        f"fmsweep: report: {tmp_path / 'packed' / 'report.md'} (with report.csv, jobs.csv, report.png, "
        "best_samples.png, best_confusion.png)"
    ) in packed.stdout
    test_root = make_fashion_root(tmp_path / "test_images", n_test=1000)  # the 1,000 images an ensemble needs
    ensemble = subprocess.run(
        [sys.executable, "-m", "fmsweep.results.ensemble", str(tmp_path / "packed"), "--data-root", str(test_root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ensemble.returncode == 0, ensemble.stderr


@pytest.mark.slow
def test_a_member_that_diverges_in_a_packed_sweep_is_reported_alone(data_root: Path, tmp_path: Path) -> None:
    proc = sweep(data_root, tmp_path, "model=fc", "optimizer=sgd", "reg.l2=0,1e38", "pack=2")
    assert proc.returncode == 1
    ok, diverged = (
        tmp_path / f"{i}_batch_size=64,epochs=2,model=fc,optimizer=sgd,reg.l2={v}" for i, v in ((0, 0), (1, 1e38))
    )
    assert json.loads((ok / "metrics.json").read_text())["status"] == "completed"
    assert "1 completed, 1 failed)" in proc.stdout
    assert f"  {diverged.name}: failed: TrainingDiverged: training diverged" in proc.stderr
    assert f"log: {tmp_path / 'packs' / '0-1' / '__main__.log'}" in proc.stderr
    assert ok.name + ":" not in proc.stderr
    assert "Error executing job" not in proc.stderr  # the sweep's summary says it, not Hydra


@pytest.mark.slow
def test_an_interrupted_packed_sweep_marks_no_member_failed_and_resumes(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    command = [
        sys.executable,
        "-m",
        "fmsweep",
        "-m",
        f"data.root={data_root}",
        "data.download=false",
        "device=cpu",
        "model=fc",
        "seed=0,1",
        "pack=2",
        "epochs=3",
        "batch_size=32",
        f"hydra.sweep.dir={tmp_path}",
    ]
    held.hold(2)
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    held.wait_held(2, alive=lambda: proc.poll() is None)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    held.release()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert not [d for d in tmp_path.glob("*/metrics.json") if json.loads(d.read_text())["status"] == "failed"]
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "Resuming from" in (tmp_path / "packs" / "0-1" / "__main__.log").read_text()
