"""The default CUDA path (marker `gpu`, skipped without CUDA): the train step captured as a CUDA graph and
replayed, bf16 autocast, channels_last, capturable fused optimizers, resume with the CUDA RNG, a stacked pack,
load_model on CUDA, and the benchmark there. Run them where a GPU is: `pytest -m gpu`."""
import json
from pathlib import Path

import pytest
import torch

import fmsweep
from fmsweep import bench, checkpoint, train
from fmsweep.data import load_fashion_mnist
from fmsweep.loader import TrainLoader

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
CUDA = torch.device("cuda")


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def cuda_setup(make_cfg, run_dir: Path, *overrides: str) -> tuple[torch.nn.Module, torch.optim.Optimizer, train.PackStep, tuple]:
    """Model, optimizer and train step of a run on CUDA, and one fixed training batch."""
    cfg = make_cfg("device=cuda", *overrides)
    run = train.RunState(cfg, run_dir, CUDA, load_fashion_mnist(cfg.data.root, False), "")
    loader = TrainLoader([run.source()], 32)
    loader.plan()
    _, x, y = next(loader.batches())
    run.model.train()
    return run.model, run.optimizer, train.PackStep([run], False, loader.num_batches), (x, y)


def run_steps(step: train.PackStep, batch: tuple, count: int) -> list[float]:
    """`count` steps on one fixed batch; their losses."""
    return [step(*batch)[0].item() for _ in range(count)]


@pytest.mark.parametrize("model", ["fc", "fancy_cnn"])
def test_graph_replay_matches_the_eager_step(make_cfg, tmp_path: Path, model: str) -> None:
    """After its warm-up the step is captured once and replayed; losses and weights follow the op-by-op step
    (both with the bf16 forward; no augmentation or dropout, so that no random draw differs between them)."""
    overrides = [f"model={model}", *(["model.channels=[8,16,16]"] if model == "fancy_cnn" else [])]
    graphed, _, graph_step, batch = cuda_setup(make_cfg, tmp_path / "graph", *overrides, "cuda.graph=true")
    eager, _, eager_step, _ = cuda_setup(make_cfg, tmp_path / "eager", *overrides, "cuda.graph=false")
    graph_losses = run_steps(graph_step, batch, 8)
    eager_losses = run_steps(eager_step, batch, 8)
    assert graph_step.graph is not None and eager_step.graph is None  # 3 warm-up steps, capture, 5 replays
    assert graph_losses == pytest.approx(eager_losses, rel=2e-2, abs=2e-2)  # bf16 forward in both
    for (name, a), b in zip(graphed.net.named_parameters(), eager.net.parameters()):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-3, msg=name)
    assert graph_losses[-1] < 0.9 * graph_losses[0]  # replays train on: not a frozen copy of one step


def test_bf16_autocast_and_channels_last_are_on_by_default_and_off_on_request(make_cfg, tmp_path: Path) -> None:
    for bf16, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        model, _, step, batch = cuda_setup(make_cfg, tmp_path / str(bf16), "model=fancy_cnn", "model.channels=[8,16,16]",
                                           f"cuda.bf16={bf16}")
        conv = model.net.features[0]
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        outputs = []
        handle = conv.register_forward_hook(lambda module, args, out: outputs.append(out.dtype))
        run_steps(step, batch, 1)
        handle.remove()
        assert outputs == [dtype]


def test_the_optimizer_is_fused_and_capturable_with_graphs(make_cfg, tmp_path: Path) -> None:
    for name in ("adam", "adamw", "sgd"):
        _, optimizer, step, batch = cuda_setup(make_cfg, tmp_path / name, "model=fc", f"optimizer={name}")
        group = optimizer.param_groups[0]
        assert group["fused"] is True and group.get("capturable", True) is True, name
        run_steps(step, batch, 5)
        assert step.graph is not None, name
        if name != "sgd":  # Adam's step count lives on the device, as capture requires
            assert next(iter(optimizer.state.values()))["step"].device.type == "cuda"


def test_a_resumed_cuda_run_continues_with_the_saved_cuda_rng(make_cfg, tmp_path: Path) -> None:
    """Op by op in float32 (no autotuning, no graph warm-up) a resumed run follows the uninterrupted one: the
    second epoch's dropout draws from the CUDA RNG restored from last.pt, its shuffle from the run's generator."""
    overrides = ("device=cuda", "model=fc", "reg=dropout", "cuda.graph=false", "cuda.bf16=false")
    train.run(make_cfg(*overrides, "epochs=2"), tmp_path / "straight")
    train.run(make_cfg(*overrides, "epochs=1"), tmp_path / "resumed")
    last = checkpoint.load(tmp_path / "resumed" / checkpoint.LAST)
    assert last["rng_cuda"] is not None and last["rng_cuda"].dtype == torch.uint8
    train.run(make_cfg(*overrides, "epochs=2"), tmp_path / "resumed")
    a, b = (checkpoint.load(tmp_path / d / checkpoint.LAST)["state_dict"] for d in ("straight", "resumed"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_the_default_cuda_path_resumes_and_learns(make_cfg, clear_data_root: Path, tmp_path: Path) -> None:
    """Graph, bf16, channels_last, fused capturable Adam: a run interrupted after epoch 1 resumes and learns."""
    overrides = ("device=cuda", f"data.root={clear_data_root}", "model=fancy_cnn")
    train.run(make_cfg(*overrides, "epochs=1"), tmp_path)
    train.run(make_cfg(*overrides, "epochs=3"), tmp_path)
    metrics = read_metrics(tmp_path)
    assert metrics["epochs_run"] == 3 and metrics["test_acc"] >= 0.7
    assert [row["epoch"] for row in checkpoint.load(tmp_path / checkpoint.LAST)["history"]] == [1, 2, 3]


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


def test_a_stacked_pack_on_cuda_trains_each_member_as_alone(make_cfg, clear_data_root: Path, tmp_path: Path) -> None:
    """The default CUDA path of a pack (vmapped step in a CUDA graph, bf16): each member lands close to its run
    alone (not bitwise: batched kernels, bf16), and every member dir is complete."""
    overrides = ("device=cuda", f"data.root={clear_data_root}", "model=fancy_cnn", "model.channels=[16,32,32]", "epochs=3")
    configs = [make_cfg(*overrides, f"seed={s}", f"optimizer.lr={lr}") for s, lr in ((0, 1e-3), (1, 3e-3), (2, 1e-3))]
    train.run_pack(configs, [tmp_path / f"packed{i}" for i in range(3)])
    for i, cfg in enumerate(configs):
        train.run(cfg, tmp_path / f"alone{i}")
        packed, alone = read_metrics(tmp_path / f"packed{i}"), read_metrics(tmp_path / f"alone{i}")
        assert packed["status"] == "completed" and packed["epochs_run"] == 3
        assert packed["test_acc"] == pytest.approx(alone["test_acc"], abs=0.05)


def test_bench_on_cuda(data_root: Path, tmp_path: Path) -> None:
    bench.main(["--cases", "linear,fancy_cnn+flip_affine", "--epochs", "2", "--warmup", "1", "--workers", "2",
                "--out", str(tmp_path), f"data.root={data_root}", "data.download=false", "device=cuda", "batch_size=32"])
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["machine"]["device_type"] == "cuda" and report["machine"]["device"] == torch.cuda.get_device_name()
    for result in report["results"]:
        assert not result["limited_batches"] and result["images_per_epoch"] == 400
        assert result["speedup"] > 0
    bench.main(["--cases", "fc", "--pack", "3", "--job-epochs", "1", "--epochs", "1", "--warmup", "0", "--out",
                str(tmp_path), f"data.root={data_root}", "data.download=false", "device=cuda", "batch_size=32"])
    [result] = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert result["pack"] == 3 and result["ratio"] > 0
