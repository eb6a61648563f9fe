"""`python -m fmsweep.bench [options] [config overrides]`: training epoch time of fmsweep against the practical.

For each case (a model, optionally with augmentation) the same network trains in two pipelines, in one process:

- fmsweep: `train.RunState`, `loader.TrainLoader` and `train.PackStep`, exactly as `python -m fmsweep` trains
  (data as tensors on the device, batched augmentation there, and on CUDA bf16 autocast with the step replayed as
  a CUDA graph);
- the practical: a DataLoader (shuffle, `--workers` processes) over torchvision's FashionMNIST as PIL images,
  per-sample transforms (the flip and affine PIL transforms, ToTensor, a normalization Lambda), each batch
  moved to the device, then forward, loss, zero_grad, backward and step of a default-built optimizer.

After `--warmup` epochs of each, `--epochs` epochs of each are timed, alternating between the pipelines so
that load from other processes hits both alike; the table gives medians. On CPU, convolutional models train
on `--cpu-cnn-batches` batches per epoch (a full epoch takes minutes there). Writes bench.json and bench.md
to `--out`. Config overrides are those of `python -m fmsweep`, e.g. data.root=... data.download=false.
With `--pack K` it times K whole jobs one after another against one packed job of them instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
import torchvision
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms

from fmsweep import checkpoint, train
from fmsweep.config import device_name, resolve_device, validate
from fmsweep.data import Splits, load_fashion_mnist, split_indices
from fmsweep.errors import UserError
from fmsweep.loader import TrainLoader

CONF = Path(__file__).resolve().parents[1] / "conf"
CASES = ("linear", "fc", "fancy_cnn+flip_affine")
CNN_NETWORKS = ("VanillaCNN", "FancyCNN")
# The speed-ups (practical / fmsweep epoch time) the project aims for, by device type and case.
TARGETS = {"cpu": {"linear": 10.0, "fc": 6.0, "fancy_cnn+flip_affine": 1.5}, "cuda": {"fancy_cnn+flip_affine": 10.0}}
# With --pack K: the aggregate images/s of one packed job of K against K unpacked jobs in sequence, by device type
# and case, where the pack trains as the device's default (stack=auto) does: one after another on the CPU, stacked
# on CUDA.
PACK_TARGETS = {"cpu": {"linear": 3.0, "fc": 2.5, "fancy_cnn+flip_affine": 1.0}, "cuda": {"fancy_cnn+flip_affine": 2.0}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fmsweep.bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated MODEL or MODEL+AUG (default: %(default)s)"
    )
    parser.add_argument(
        "--epochs", type=int, default=3, help="timed epochs per pipeline and case (default: %(default)s)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs first (default: %(default)s)")
    parser.add_argument(
        "--cpu-cnn-batches",
        type=int,
        default=10,
        help="on CPU, batches per epoch of convolutional models; 0: whole epochs (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="DataLoader workers of the practical (default: the CPU count, %(default)s)",
    )
    parser.add_argument(
        "--pack",
        type=int,
        default=1,
        metavar="K",
        help="K >= 2: instead, time K unpacked jobs in sequence (seeds 0 to K-1) against one packed job of "
        "K, whole jobs (set-up, epochs, final evaluation, files), --warmup untimed and --epochs "
        "timed rounds of both (default: %(default)s)",
    )
    parser.add_argument(
        "--job-epochs", type=int, default=3, help="with --pack: epochs of each job (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for bench.json and bench.md (default: .)")
    parser.add_argument("overrides", nargs="*", help="config overrides as for python -m fmsweep, e.g. data.root=DIR")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.pack < 1 or args.job_epochs < 1:
        parser.error("--epochs, --pack and --job-epochs must be >= 1")
    if args.warmup < 0 or args.cpu_cnn_batches < 0 or args.workers < 0:
        parser.error("--warmup, --cpu-cnn-batches and --workers must be >= 0")
    return args


def case_config(case: str, overrides: list[str]) -> DictConfig:
    """The run config of `case` ("model" or "model+aug") with the user's overrides, validated."""
    model, _, aug = case.partition("+")
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[f"model={model}", f"aug={aug or 'none'}", *overrides])
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(f"case {case!r} with overrides {overrides}: {str(exc).splitlines()[0]}") from None
    validate(cfg)
    return cfg


def timed(epoch: Callable[[], Any], device: torch.device) -> float:
    """Seconds `epoch()` takes, the device's queued work included."""
    start = time.perf_counter()
    epoch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def rounds(
    what: str, pipelines: dict[str, Callable[[], Any]], device: torch.device, args: argparse.Namespace
) -> dict[str, list[float]]:
    """`--warmup` untimed, then `--epochs` timed rounds that each run every pipeline once, alternating so that load
    from other processes hits them alike; the seconds of each pipeline's timed runs."""
    seconds: dict[str, list[float]] = {name: [] for name in pipelines}
    for round_ in range(args.warmup + args.epochs):
        times = {name: timed(pipeline, device) for name, pipeline in pipelines.items()}
        print(
            f"{what} {'warm-up' if round_ < args.warmup else 'timed'}: "
            + ", ".join(f"{name} {t:.3f}s" for name, t in times.items()),
            file=sys.stderr,
        )
        if round_ >= args.warmup:
            for name, t in times.items():
                seconds[name].append(t)
    return seconds


def fmsweep_epoch(run: train.RunState) -> Callable[[], float]:
    """One training epoch of `run` as `python -m fmsweep` trains it: its TrainLoader and PackStep."""
    loader = TrainLoader([run.source()], run.cfg.batch_size)
    step = train.PackStep([run], False, loader.num_batches)

    def epoch() -> float:
        run.model.train()
        loader.plan()
        losses = torch.zeros(loader.num_batches, device=run.data.train_x.device)
        for b, x, y in loader.batches():
            loss, _ = step(x, y)
            losses[b] = loss[0] * y.shape[1]
        return losses.sum().item() / loader.n

    return epoch


class DatasetTransformer(Dataset):
    """The practical's wrapper: applies `transform` to the image of each (image, target) pair."""

    def __init__(self, base_dataset: Subset, transform: Callable) -> None:
        self.base_dataset, self.transform = base_dataset, transform

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, target = self.base_dataset[index]
        return self.transform(img), target

    def __len__(self) -> int:
        return len(self.base_dataset)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The practical's normalization Lambda (a module-level function, so that workers can unpickle it)."""
    return (x - mean) / std


def practical_epoch(cfg: DictConfig, data: Splits, workers: int) -> Callable[[], float]:
    """One training epoch of the practical's pipeline on the same training images, network and optimizer config."""
    device, n_train = data.train_x.device, len(data.train_y)
    base = torchvision.datasets.FashionMNIST(str(Path(cfg.data.root).expanduser()), train=True, download=False)
    train_idx, _ = split_indices(len(base), cfg.data.valid_ratio, cfg.data.subset, cfg.seed)
    steps: list[Callable] = [
        transforms.ToTensor(),
        transforms.Lambda(partial(normalize, mean=data.mean.cpu(), std=data.std.cpu())),
    ]
    steps[:0] = instantiate(cfg.aug).torchvision()
    dataset = DatasetTransformer(Subset(base, train_idx[:n_train].tolist()), transforms.Compose(steps))
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=workers)
    model = checkpoint.build_network(cast(dict[str, Any], OmegaConf.to_container(cfg.model, resolve=True))).to(device)
    optimizer = instantiate(cfg.optimizer)(model.parameters())

    def epoch() -> float:
        model.train()
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            loss = F.cross_entropy(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return loss.item()

    return epoch


def bench_case(case: str, cfg: DictConfig, args: argparse.Namespace) -> dict[str, Any]:
    """Time both pipelines on one case; epochs alternate between them."""
    device = resolve_device(cfg.device)
    with tempfile.TemporaryDirectory() as run_dir:
        run = train.RunState(cfg, Path(run_dir), device, load_fashion_mnist(cfg.data.root, cfg.data.download), "")
        n_train = len(run.data.train_y)
        limited = (
            device.type == "cpu" and cfg.model._target_.split(".")[-1] in CNN_NETWORKS and args.cpu_cnn_batches > 0
        )
        if limited:
            n_train = min(n_train, args.cpu_cnn_batches * cfg.batch_size)
            run.data = dataclasses.replace(
                run.data, train_x=run.data.train_x[:n_train], train_y=run.data.train_y[:n_train]
            )
        pipelines = {"practical": practical_epoch(cfg, run.data, args.workers), "fmsweep": fmsweep_epoch(run)}
        seconds = rounds(f"{case}: epoch", pipelines, device, args)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    return {
        "case": case,
        "images_per_epoch": n_train,
        "batches_per_epoch": -(-n_train // cfg.batch_size),
        "limited_batches": limited,
        "batch_size": cfg.batch_size,
        "epoch_seconds": seconds,
        "median_seconds": median,
        "images_per_second": {name: n_train / s for name, s in median.items()},
        "speedup": median["practical"] / median["fmsweep"],
        "target": TARGETS.get(device.type, {}).get(case),
    }


def bench_pack(case: str, overrides: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Time K unpacked jobs in sequence against one packed job of the same K configs (seeds 0 to K-1), whole jobs
    as train.run_pack runs them in a sweep job; rounds alternate between the two."""
    configs = [case_config(case, [*overrides, f"seed={k}", f"epochs={args.job_epochs}"]) for k in range(args.pack)]
    cfg, device = configs[0], resolve_device(configs[0].device)
    limited = device.type == "cpu" and cfg.model._target_.split(".")[-1] in CNN_NETWORKS and args.cpu_cnn_batches > 0
    if limited:  # data.subset such that the train split holds cpu_cnn_batches batches
        subset = math.ceil(args.cpu_cnn_batches * cfg.batch_size / (1 - cfg.data.valid_ratio))
        configs = [
            case_config(case, [*overrides, f"seed={k}", f"epochs={args.job_epochs}", f"data.subset={subset}"])
            for k in range(args.pack)
        ]

    def unpacked() -> None:
        with tempfile.TemporaryDirectory() as out:
            for k, c in enumerate(configs):
                train.run_pack([c], [Path(out) / str(k)])

    def packed() -> None:
        with tempfile.TemporaryDirectory() as out:
            train.run_pack(configs, [Path(out) / str(k) for k in range(len(configs))])

    seconds = rounds(f"{case} pack={args.pack}: round", {"unpacked": unpacked, "packed": packed}, device, args)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    cfg = configs[0]
    n_images = len(load_fashion_mnist(cfg.data.root, cfg.data.download)[1])
    n_train = len(split_indices(n_images, cfg.data.valid_ratio, cfg.data.subset, cfg.seed)[0])
    images = args.pack * args.job_epochs * n_train
    together = train.stacked(device, cfg, args.pack)
    return {
        "case": case,
        "pack": args.pack,
        "stacked": together,
        "job_epochs": args.job_epochs,
        "train_images": n_train,
        "limited_batches": limited,
        "batch_size": cfg.batch_size,
        "seconds": seconds,
        "median_seconds": median,
        "images_per_second": {name: images / s for name, s in median.items()},
        "ratio": median["unpacked"] / median["packed"],
        "target": PACK_TARGETS.get(device.type, {}).get(case) if together == (device.type == "cuda") else None,
    }


def machine(device: torch.device, workers: int) -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "device": device_name(device),
        "device_type": device.type,
        "cpu_count": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "workers": workers,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def table(title: str, columns: list[str], rows: list[list[str]], footnote: str | None) -> str:
    """A markdown table under a title line, the first column left-aligned, with an optional footnote."""
    lines = [title, "", "| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([*lines, *(["", footnote] if footnote else [])]) + "\n"


def verdict(value: float, target: float | None) -> str:
    return f"≥ {target:g}× {'met' if value >= target else 'missed'}" if target else ""


def markdown(report: dict[str, Any]) -> str:
    """The results as a markdown table with a header line on the machine."""
    m, results = report["machine"], report["results"]
    machine_text = (
        f"{m['device_type']}: {m['device']}, {m['cpu_count']} CPUs, torch {m['torch']}, {m['torch_threads']} threads"
    )
    limited = any(r["limited_batches"] for r in results)
    if "pack" not in results[0]:
        title = (
            f"Training epoch (batch {results[0]['batch_size']}), median of {report['epochs']} epochs after "
            f"{report['warmup']} warm-up; {machine_text}; the practical's DataLoader with {m['workers']} workers."
        )
        columns = [
            "case",
            "images/epoch",
            "practical s/epoch",
            "practical img/s",
            "fmsweep s/epoch",
            "fmsweep img/s",
            "speed-up",
            "target",
        ]
        rows = [
            [
                r["case"],
                f"{r['images_per_epoch']}{' *' if r['limited_batches'] else ''}",
                f"{r['median_seconds']['practical']:.3f}",
                f"{r['images_per_second']['practical']:,.0f}",
                f"{r['median_seconds']['fmsweep']:.3f}",
                f"{r['images_per_second']['fmsweep']:,.0f}",
                f"{r['speedup']:.2f}×",
                verdict(r["speedup"], r["target"]),
            ]
            for r in results
        ]
        footnote = (
            f"\\* on CPU, convolutional models train on {report['cpu_cnn_batches']} batches per epoch (the images "
            "counted), not on the whole training split: set --cpu-cnn-batches 0 for whole epochs."
        )
    else:
        title = (
            f"{results[0]['pack']} jobs of {results[0]['job_epochs']} epochs (batch {results[0]['batch_size']}): "
            f"unpacked in sequence against one packed job, whole jobs in one process, median of {report['epochs']} "
            f"rounds after {report['warmup']} warm-up; {machine_text}."
        )
        columns = [
            "case",
            "packed as",
            "train images",
            "unpacked s",
            "unpacked img/s",
            "packed s",
            "packed img/s",
            "ratio",
            "target",
        ]
        rows = [
            [
                r["case"],
                "stacked" if r["stacked"] else "one after another",
                f"{r['train_images']}{' *' if r['limited_batches'] else ''}",
                f"{r['median_seconds']['unpacked']:.2f}",
                f"{r['images_per_second']['unpacked']:,.0f}",
                f"{r['median_seconds']['packed']:.2f}",
                f"{r['images_per_second']['packed']:,.0f}",
                f"{r['ratio']:.2f}×",
                verdict(r["ratio"], r["target"]),
            ]
            for r in results
        ]
        footnote = (
            f"\\* on CPU, convolutional models train on data.subset such that the train split holds "
            f"{report['cpu_cnn_batches']} batches: set --cpu-cnn-batches 0 for the whole split."
        )
    return table(title, columns, rows, footnote if limited else None)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        configs = {case: case_config(case, args.overrides) for case in args.cases.split(",")}
        device = resolve_device(next(iter(configs.values())).device)
        if args.pack > 1:
            results = [bench_pack(case, args.overrides, args) for case in configs]
        else:
            results = [bench_case(case, cfg, args) for case, cfg in configs.items()]
    except UserError as exc:
        print(f"fmsweep.bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    report = {
        "machine": machine(device, args.workers),
        "epochs": args.epochs,
        "warmup": args.warmup,
        "cpu_cnn_batches": args.cpu_cnn_batches,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "bench.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
