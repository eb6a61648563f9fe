"""`python -m fmsweep.bench [options] [config overrides]`: training epoch time of fmsweep against the practical.

For each case (a model, optionally with augmentation) the same network trains in two pipelines, in one process:

- fmsweep: `train.setup` and `train.TrainStep`, exactly as `python -m fmsweep` trains (data as tensors on the
  device, batched augmentation there, and on CUDA bf16 autocast with the step replayed as a CUDA graph);
- the practical: a DataLoader (shuffle, `--workers` processes) over torchvision's FashionMNIST as PIL images,
  per-sample transforms (the flip and affine PIL transforms, ToTensor, a normalization Lambda), each batch
  moved to the device, then forward, loss, zero_grad, backward and step of a default-built optimizer.

After `--warmup` epochs of each, `--epochs` epochs of each are timed, alternating between the pipelines so
that load from other processes hits both alike; the table gives medians. On CPU, convolutional models train
on `--cpu-cnn-batches` batches per epoch (a full epoch takes minutes there). Writes bench.json and bench.md
to `--out`. Config overrides are those of `python -m fmsweep`, e.g. data.root=... data.download=false.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

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
from fmsweep.data import Splits, prepare, split_indices
from fmsweep.errors import UserError

CONF = Path(__file__).resolve().parent / "conf"
CASES = ("linear", "fc", "fancy_cnn+flip_affine")
CNN_NETWORKS = ("VanillaCNN", "FancyCNN")
# The speed-ups (practical / fmsweep epoch time) the project aims for, by device type and case.
TARGETS = {"cpu": {"linear": 10.0, "fc": 6.0, "fancy_cnn+flip_affine": 1.5}, "cuda": {"fancy_cnn+flip_affine": 3.5}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fmsweep.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated MODEL or MODEL+AUG (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per pipeline and case (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs first (default: %(default)s)")
    parser.add_argument("--cpu-cnn-batches", type=int, default=10,
                        help="on CPU, batches per epoch of convolutional models; 0: whole epochs (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="DataLoader workers of the practical (default: the CPU count, %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for bench.json and bench.md (default: .)")
    parser.add_argument("overrides", nargs="*", help="config overrides as for python -m fmsweep, e.g. data.root=DIR")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.warmup < 0 or args.cpu_cnn_batches < 0 or args.workers < 0:
        parser.error("--epochs must be >= 1; --warmup, --cpu-cnn-batches and --workers >= 0")
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


def fmsweep_epoch(cfg: DictConfig, data: Splits) -> Callable[[], float]:
    """One training epoch as `python -m fmsweep` runs it (train.setup, train.TrainStep, the same accounting)."""
    model, _, step = train.setup(cfg, OmegaConf.to_container(cfg.model, resolve=True), data)
    n, batch_size, device = len(data.train_y), cfg.batch_size, data.train_x.device

    def epoch() -> float:
        model.train()
        perm = torch.randperm(n, device=device)
        losses = torch.zeros(-(-n // batch_size), device=device)
        correct = torch.zeros((), device=device)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss, n_correct = step(idx)
            losses[i // batch_size] = loss * len(idx)
            correct += n_correct
        return losses.sum().item() / n

    return epoch


class DatasetTransformer(Dataset):
    """The practical's wrapper: applies `transform` to the image of each (image, target) pair."""

    def __init__(self, base_dataset: Dataset, transform: Callable) -> None:
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
    steps: list[Callable] = [transforms.ToTensor(), transforms.Lambda(partial(normalize, mean=data.mean.cpu(), std=data.std.cpu()))]
    aug = cfg.aug
    if aug.hflip or aug.degrees or aug.translate:
        steps[:0] = [transforms.RandomHorizontalFlip(aug.hflip),
                     transforms.RandomAffine(degrees=aug.degrees, translate=(aug.translate, aug.translate))]
    dataset = DatasetTransformer(Subset(base, train_idx[:n_train].tolist()), transforms.Compose(steps))
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=workers)
    model = checkpoint.build_network(OmegaConf.to_container(cfg.model, resolve=True)).to(device)
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
    torch.manual_seed(cfg.seed)
    data = prepare(cfg.data, cfg.seed, device)
    n_train = len(data.train_y)
    limited = device.type == "cpu" and cfg.model._target_.split(".")[-1] in CNN_NETWORKS and args.cpu_cnn_batches > 0
    if limited:
        n_train = min(n_train, args.cpu_cnn_batches * cfg.batch_size)
        data = dataclasses.replace(data, train_x=data.train_x[:n_train], train_y=data.train_y[:n_train])
    pipelines = {"practical": practical_epoch(cfg, data, args.workers), "fmsweep": fmsweep_epoch(cfg, data)}
    seconds: dict[str, list[float]] = {name: [] for name in pipelines}
    for round_ in range(args.warmup + args.epochs):
        times = {name: timed(epoch, device) for name, epoch in pipelines.items()}
        print(f"{case}: {'warm-up' if round_ < args.warmup else 'timed'} epoch "
              + ", ".join(f"{name} {t:.3f}s" for name, t in times.items()), file=sys.stderr)
        if round_ >= args.warmup:
            for name, t in times.items():
                seconds[name].append(t)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    return {
        "case": case, "images_per_epoch": n_train, "batches_per_epoch": -(-n_train // cfg.batch_size),
        "limited_batches": limited, "batch_size": cfg.batch_size, "epoch_seconds": seconds,
        "median_seconds": median, "images_per_second": {name: n_train / s for name, s in median.items()},
        "speedup": median["practical"] / median["fmsweep"], "target": TARGETS.get(device.type, {}).get(case),
    }


def machine(device: torch.device, workers: int) -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "device": device_name(device),
        "device_type": device.type, "cpu_count": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
        "workers": workers, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def markdown(report: dict[str, Any]) -> str:
    """The results as a markdown table with a header line on the machine."""
    m = report["machine"]
    lines = [
        f"Training epoch (batch {report['results'][0]['batch_size']}), median of {report['epochs']} epochs after "
        f"{report['warmup']} warm-up; {m['device_type']}: {m['device']}, {m['cpu_count']} CPUs, torch {m['torch']}, "
        f"{m['torch_threads']} threads; the practical's DataLoader with {m['workers']} workers.",
        "",
        "| case | images/epoch | practical s/epoch | practical img/s | fmsweep s/epoch | fmsweep img/s | speed-up | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        s, ips = r["median_seconds"], r["images_per_second"]
        target = f"≥ {r['target']:g}× {'met' if r['speedup'] >= r['target'] else 'missed'}" if r["target"] else ""
        lines.append(
            f"| {r['case']} | {r['images_per_epoch']}{' *' if r['limited_batches'] else ''} | {s['practical']:.3f} | "
            f"{ips['practical']:,.0f} | {s['fmsweep']:.3f} | {ips['fmsweep']:,.0f} | {r['speedup']:.2f}× | {target} |"
        )
    if any(r["limited_batches"] for r in report["results"]):
        lines += ["", f"\\* on CPU, convolutional models train on {report['cpu_cnn_batches']} batches per epoch (the images "
                      "counted), not on the whole training split: set --cpu-cnn-batches 0 for whole epochs."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        configs = {case: case_config(case, args.overrides) for case in args.cases.split(",")}
        device = resolve_device(next(iter(configs.values())).device)
        results = [bench_case(case, cfg, args) for case, cfg in configs.items()]
    except UserError as exc:
        print(f"fmsweep.bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    report = {"machine": machine(device, args.workers), "epochs": args.epochs, "warmup": args.warmup,
              "cpu_cnn_batches": args.cpu_cnn_batches, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "bench.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
