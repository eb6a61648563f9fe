"""The default CUDA path (marker `gpu`, skipped without CUDA), each test against a reference that a wrong number
would miss: the step captured as a CUDA graph against the op-by-op step over changing batches, a stacked pack
(vmap + graph + bf16 + channels_last) against its members one by one, the lr schedule inside the graph, a resume
against the uninterrupted run, a member leaving a stacked pack, fused SGD with a tensor lr, a lone run off vmap,
load_model on CUDA and the benchmark there. Run them where a GPU is: `pytest -m gpu`, or all GPU checks at once
with `bash tests/gpu/accept.sh OUT_DIR`."""

import json
import signal
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from test_crash import SignalledSteps, assert_consistent
from test_pack import stacked_steps

import fmsweep
from fmsweep import checkpoint, train
from fmsweep.bench import step as bench
from fmsweep.data import load_fashion_mnist
from fmsweep.errors import Interrupted
from fmsweep.loader import TrainLoader

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
CUDA = torch.device("cuda")
SMALL_CNN = ("model=fancy_cnn", "model.channels=[8,16,16]")
# bf16 forward: a few per cent on a loss, and on weights after a few steps
LOSS_TOLERANCE: dict[str, Any] = {"rel": 2e-2, "abs": 2e-2}
WEIGHT_TOLERANCE: dict[str, Any] = {"rtol": 5e-2, "atol": 5e-3}


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def assert_close_weights(a: dict, b: dict, **tolerance: Any) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key].float(), a[key].float(), **(tolerance or WEIGHT_TOLERANCE), msg=key)


def runs_on_cuda(
    make_cfg, run_dir: Path, *settings: tuple[str, ...], stacked: bool = False
) -> tuple[list[train.RunState], TrainLoader, train.PackStep]:
    """Runs (one per settings) on CUDA in training mode, their loader (epoch planned) and train step."""
    raw = None
    pack = []
    for i, overrides in enumerate(settings):
        cfg = make_cfg("device=cuda", "batch_size=32", *overrides)
        raw = raw or load_fashion_mnist(cfg.data.root, False)
        pack.append(train.RunState(cfg, run_dir / str(i), CUDA, raw, ""))
    for run in pack:
        run.model.train()
    loader = TrainLoader([run.source() for run in pack], pack[0].cfg.batch_size)
    loader.plan()
    return pack, loader, train.PackStep(pack, stacked, loader.num_batches)


def full_batches(loader: TrainLoader, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `count` full batches of the planned epoch (each a different draw of images)."""
    batches = [(x.clone(), y.clone()) for _, x, y in loader.batches() if y.shape[1] == loader.batch_size]
    assert len(batches) >= count
    return batches[:count]


def steps_built(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Records (members, stacked) of every train step built from now on."""
    built: list[tuple[int, bool]] = []
    init = train.PackStep.__init__

    def recording(self: train.PackStep, pack: list[train.RunState], stacked: bool, steps: int) -> None:
        built.append((len(pack), stacked))
        init(self, pack, stacked, steps)

    monkeypatch.setattr(train.PackStep, "__init__", recording)
    return built


def state(run: train.RunState) -> dict:
    return {k: v.detach().clone() for k, v in run.model.net.state_dict().items()}


@pytest.mark.parametrize(
    "model", [("model=fc", "reg=dropout"), (*SMALL_CNN, "reg.dropout=0.3")], ids=["fc", "fancy_cnn"]
)
def test_graph_replays_follow_the_eager_step_over_changing_batches(
    make_cfg, clear_data_root: Path, tmp_path: Path, model: tuple[str, ...]
) -> None:
    """3 warm-up steps, the capture, then 6 replays, each on a new batch (augmented, with dropout drawn inside the
    graph): every step's loss and the weights after them follow the op-by-op step; each replay ran on its own
    batch, not on the one captured."""
    overrides = (f"data.root={clear_data_root}", *model, "aug=flip_affine", "optimizer.lr=3e-3")
    [graphed], loader, graph_step = runs_on_cuda(make_cfg, tmp_path / "graph", (*overrides, "cuda.graph=true"))
    [eager], _, eager_step = runs_on_cuda(make_cfg, tmp_path / "eager", (*overrides, "cuda.graph=false"))
    batches = full_batches(loader, 10)
    graph_losses = []
    for i, (x, y) in enumerate(batches):
        graph_losses.append(graph_step(x, y)[0].item())
        if i >= 3:  # the graph's input is this batch, not the captured one
            assert torch.equal(graph_step.static[0], x) and torch.equal(graph_step.static[1], y)
    eager_losses = [eager_step(x, y)[0].item() for x, y in batches]
    assert graph_step.graph is not None and eager_step.graph is None
    assert not torch.equal(batches[3][0], batches[4][0])
    assert graph_losses == pytest.approx(eager_losses, **LOSS_TOLERANCE)
    assert_close_weights(state(eager), state(graphed))


def test_bf16_autocast_and_channels_last_are_on_by_default_and_off_on_request(make_cfg, tmp_path: Path) -> None:
    for bf16, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        [run], loader, step = runs_on_cuda(make_cfg, tmp_path / str(bf16), (*SMALL_CNN, f"cuda.bf16={bf16}"))
        conv = run.model.net.get_submodule("features.0")
        assert isinstance(conv, torch.nn.Conv2d)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        outputs = []
        handle = conv.register_forward_hook(lambda module, args, out: outputs.append(out.dtype))  # noqa: B023 (removed in this iteration)
        step(*full_batches(loader, 1)[0])
        handle.remove()
        assert outputs == [dtype]


def test_a_cuda_run_turns_cudnn_autotuning_on(make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN's autotuning (each convolution shape's fastest algorithm, found once) is off as torch starts; building a
    run on the CPU leaves it so, building one on CUDA turns it on."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    cfg = make_cfg(*SMALL_CNN)
    train.RunState(cfg, tmp_path / "cpu", torch.device("cpu"), load_fashion_mnist(cfg.data.root, False), "")
    assert torch.backends.cudnn.benchmark is False
    runs_on_cuda(make_cfg, tmp_path / "cuda", SMALL_CNN)
    assert torch.backends.cudnn.benchmark is True


def test_the_optimizer_is_fused_and_capturable_with_graphs(make_cfg, tmp_path: Path) -> None:
    for name in ("adam", "adamw", "sgd"):
        [run], loader, step = runs_on_cuda(make_cfg, tmp_path / name, ("model=fc", f"optimizer={name}"))
        group = run.optimizer.param_groups[0]
        assert group["fused"] is True and group.get("capturable", True) is True, name
        for x, y in full_batches(loader, 5):
            step(x, y)
        assert step.graph is not None, name
        if name != "sgd":  # Adam's step count lives on the device, as capture requires
            assert next(iter(run.optimizer.state.values()))["step"].device.type == "cuda"


def test_a_stacked_pack_steps_each_member_as_its_one_by_one_twin(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """The default path of a pack (vmapped step captured as a graph, bf16, channels_last; BatchNorm, dropout): after
    10 steps each member is where its twin is, trained alone on the same batches. Each member has its own seed and
    lr: a stacked step that gave one member's lr or batch to another would show. SGD, which does not blow bf16's
    rounding of tiny gradients up to whole steps as Adam does."""
    settings = [
        (*SMALL_CNN, "reg.dropout=0.3", "optimizer=sgd", f"seed={s}", f"optimizer.lr={lr}", "aug=flip_affine")
        for s, lr in ((0, 0.05), (1, 0.02), (2, 0.01))
    ]
    sizes = stacked_steps(monkeypatch)
    pack, loader, step = runs_on_cuda(make_cfg, tmp_path / "pack", *settings, stacked=True)
    for x, y in full_batches(loader, 10):
        step(x, y)
    assert step.vmapped is not None and step.graph is not None
    assert sizes == [3] * 4  # the warm-up steps and the capture went through vmap; the replays replay it
    assert all(
        p.is_contiguous(memory_format=torch.channels_last)
        for run in pack
        for p in run.model.net.parameters()
        if p.ndim == 4
    )
    for i, overrides in enumerate(settings):
        [twin], twin_loader, twin_step = runs_on_cuda(make_cfg, tmp_path / f"twin{i}", overrides)
        for x, y in full_batches(twin_loader, 10):
            twin_step(x, y)
        assert twin_step.vmapped is None and twin_step.graph is not None
        assert_close_weights(state(twin), state(pack[i]))


def test_a_lone_run_trains_through_its_module_and_a_pack_stacks(
    make_cfg, clear_data_root: Path, tmp_path: Path, monkeypatch
) -> None:
    built = steps_built(monkeypatch)
    overrides = ("device=cuda", f"data.root={clear_data_root}", "model=fc")
    train.run(make_cfg(*overrides), tmp_path / "lone")
    train.run_pack([make_cfg(*overrides, f"seed={s}") for s in (0, 1)], [tmp_path / "a", tmp_path / "b"])
    train.run_pack([make_cfg(*overrides, f"seed={s}", "stack=false") for s in (0, 1)], [tmp_path / "c", tmp_path / "d"])
    assert built == [(1, False), (2, True), (1, False), (1, False)]


def test_the_schedule_inside_the_graph_gives_the_eager_lr_sequence(make_cfg, tmp_path: Path) -> None:
    """OneCycle over a 1-epoch run: the lr that each replay leaves in the optimizer is the schedule's, as eager."""
    overrides = ("model=fc", "scheduler=onecycle", "optimizer.lr=0.01")
    [graphed], loader, graph_step = runs_on_cuda(make_cfg, tmp_path / "graph", (*overrides, "cuda.graph=true"))
    [eager], _, eager_step = runs_on_cuda(make_cfg, tmp_path / "eager", (*overrides, "cuda.graph=false"))
    lrs: dict[str, list[float]] = {"graph": [], "eager": []}
    for x, y in full_batches(loader, 10):
        for name, run, step in (("graph", graphed, graph_step), ("eager", eager, eager_step)):
            step(x, y)
            lrs[name].append(float(run.optimizer.param_groups[0]["lr"]))
    assert graph_step.graph is not None
    expected = [0.01 * graphed.schedule.factor(torch.tensor(float(i)), loader.num_batches, 1).item() for i in range(10)]
    assert lrs["eager"] == pytest.approx(expected, rel=1e-5)
    assert lrs["graph"] == pytest.approx(expected, rel=1e-5)
    assert len(set(lrs["graph"])) == 10  # the lr moved at every replay


def test_fused_sgd_with_a_tensor_lr_steps_as_plain_sgd(make_cfg, tmp_path: Path) -> None:
    """A scheduled run's fused, capturable SGD (momentum, nesterov) with its lr a device tensor set inside the graph,
    in float32: its weights follow torch's plain for-loop SGD given the same lr as a number at each step."""
    [run], loader, step = runs_on_cuda(
        make_cfg, tmp_path / "fused", ("model=fc", "optimizer=sgd", "scheduler=cosine", "cuda.bf16=false")
    )
    group = run.optimizer.param_groups[0]
    assert group["fused"] is True and torch.is_tensor(group["lr"]) and group["lr"].device.type == "cuda"
    reference = checkpoint.build_network(run.model_config).to(CUDA)
    reference.load_state_dict(run.model.net.state_dict())
    plain = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9, nesterov=True, foreach=False)
    for i, (x, y) in enumerate(full_batches(loader, 8)):
        step(x, y)
        plain.param_groups[0]["lr"] = 0.01 * run.schedule.factor(torch.tensor(float(i)), loader.num_batches, 1).item()
        plain.zero_grad()
        torch.nn.functional.cross_entropy(reference(x[0]), y[0]).backward()
        plain.step()
    assert step.graph is not None
    assert_close_weights(reference.state_dict(), state(run), rtol=1e-4, atol=1e-5)


def test_a_resumed_cuda_run_equals_the_uninterrupted_one(
    make_cfg, clear_data_root: Path, tmp_path: Path, monkeypatch
) -> None:
    """The default path (graph, bf16, fused capturable Adam, BatchNorm, dropout): stopped in epoch 1 and after it,
    the run resumes (warm-up and capture again) and ends where the uninterrupted run ends; and it learns."""
    cfg = make_cfg("device=cuda", f"data.root={clear_data_root}", "model=fancy_cnn", "reg.dropout=0.3", "epochs=3")
    train.run(cfg, tmp_path / "straight")
    SignalledSteps(monkeypatch, {6: signal.SIGINT, 13: signal.SIGINT})  # mid-epoch 1 (after the capture), its end
    for _ in range(2):
        with pytest.raises(Interrupted):
            train.run(cfg, tmp_path / "resumed")
        assert_consistent(tmp_path / "resumed")
    train.run(cfg, tmp_path / "resumed")
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert resumed["epochs_run"] == 3 and resumed["test_acc"] >= 0.7
    assert resumed["valid_loss"] == pytest.approx(straight["valid_loss"], **LOSS_TOLERANCE)
    assert_close_weights(
        *(checkpoint.load(tmp_path / d / checkpoint.LAST)["state_dict"] for d in ("straight", "resumed"))
    )


def test_a_member_that_leaves_a_stacked_pack_on_cuda_leaves_the_others_where_they_would_be(
    make_cfg, clear_data_root: Path, tmp_path: Path, monkeypatch
) -> None:
    """As on the CPU (tests/test_pack.py), on the default CUDA path: the two left train on as if it had stayed."""
    common = ("device=cuda", f"data.root={clear_data_root}", "model=fc", "reg=dropout", "optimizer=sgd", "epochs=4")
    stays = [make_cfg(*common, f"seed={s}") for s in range(3)]
    train.run_pack(stays, [tmp_path / f"stays{i}" for i in range(3)])
    built = steps_built(monkeypatch)
    leaves = [make_cfg(*common, "seed=0", "early_stop.patience=1", "early_stop.min_delta=10"), *stays[1:]]
    train.run_pack(leaves, [tmp_path / f"leaves{i}" for i in range(3)])
    assert built == [(3, True), (2, True)] and read_metrics(tmp_path / "leaves0")["epochs_run"] == 2
    for i in (1, 2):
        a, b = (checkpoint.load(tmp_path / f"{d}{i}" / checkpoint.LAST)["state_dict"] for d in ("stays", "leaves"))
        assert_close_weights(a, b)
        assert read_metrics(tmp_path / f"leaves{i}")["valid_loss"] == pytest.approx(
            read_metrics(tmp_path / f"stays{i}")["valid_loss"], **LOSS_TOLERANCE
        )


def test_load_model_on_cuda_predicts_as_on_cpu(make_cfg, data_root: Path, tmp_path: Path) -> None:
    train.run(make_cfg("device=cuda", "model=vanilla_cnn"), tmp_path)
    on_cuda, on_cpu = fmsweep.load_model(tmp_path, device="cuda"), fmsweep.load_model(tmp_path)
    assert all(p.device.type == "cuda" for p in on_cuda.parameters())
    _, _, test_x, test_y = fmsweep.data.load_fashion_mnist(data_root, download=False)
    with torch.no_grad():
        logits = on_cuda(test_x.to("cuda"))
        torch.testing.assert_close(logits.cpu(), on_cpu(test_x), rtol=1e-2, atol=1e-2)  # cuDNN convs use TF32
    accuracy = (logits.argmax(1).cpu() == test_y).float().mean().item()
    assert accuracy == pytest.approx(read_metrics(tmp_path)["test_acc"], abs=0.01)


def test_bench_on_cuda(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bench's figures are those of what it timed: whole CUDA epochs, fmsweep's ahead of the practical's
    DataLoader pipeline (a few graph replays against worker processes and PIL transforms), medians and ratios of
    the seconds it recorded, and a pack stacked exactly when it says so."""
    bench.main(
        [
            "--cases",
            "linear,fancy_cnn+flip_affine",
            "--epochs",
            "2",
            "--warmup",
            "1",
            "--workers",
            "2",
            "--out",
            str(tmp_path),
            f"data.root={data_root}",
            "data.download=false",
            "device=cuda",
            "batch_size=32",
        ]
    )
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["machine"]["device_type"] == "cuda" and report["machine"]["device"] == torch.cuda.get_device_name()
    for result in report["results"]:
        assert not result["limited_batches"] and result["images_per_epoch"] == 400
        median = {name: statistics.median(seconds) for name, seconds in result["epoch_seconds"].items()}
        assert median == result["median_seconds"] and all(len(s) == 2 for s in result["epoch_seconds"].values())
        assert result["speedup"] == pytest.approx(median["practical"] / median["fmsweep"]) and result["speedup"] > 1
    built = steps_built(monkeypatch)
    for stack in ("true", "false"):
        built.clear()
        bench.main(
            [
                "--cases",
                "fc",
                "--pack",
                "3",
                "--job-epochs",
                "1",
                "--epochs",
                "1",
                "--warmup",
                "0",
                "--out",
                str(tmp_path),
                f"data.root={data_root}",
                "data.download=false",
                "device=cuda",
                "batch_size=32",
                f"stack={stack}",
            ]
        )
        [result] = json.loads((tmp_path / "bench.json").read_text())["results"]
        assert result["pack"] == 3 and result["stacked"] == (stack == "true") and result["train_images"] == 400
        # one round: 3 lone jobs, then the pack: one step of 3 stacked, or 3 steps of one
        assert built == [(1, False)] * 3 + ([(3, True)] if result["stacked"] else [(1, False)] * 3)
        median = {name: statistics.median(seconds) for name, seconds in result["seconds"].items()}
        assert median == result["median_seconds"]
        assert result["ratio"] == pytest.approx(median["unpacked"] / median["packed"])
        assert result["images_per_second"]["packed"] == pytest.approx(3 * 400 / median["packed"])
