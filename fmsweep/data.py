"""Fashion-MNIST as tensors on the training device: load, split, normalization statistics, augmentation."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torchvision.datasets import FashionMNIST

from fmsweep.errors import UserError
from fmsweep.models import IMAGE_SIZE, NUM_CLASSES

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass
class Splits:
    """uint8 images (N, 28, 28) and int64 labels of each split, plus train-split normalization stats."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    valid_x: torch.Tensor
    valid_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def not_loadable(raw: Path, problem: str) -> UserError:
    """The error for a data folder that does not hold a readable Fashion-MNIST."""
    return UserError(
        f"Fashion-MNIST not loadable from {raw}: {problem}; expected the four files "
        f"{', '.join(RAW_FILES)} (set data.root to the folder that holds FashionMNIST/raw)"
    )


def missing_files(root: str | Path) -> tuple[Path, list[str]]:
    """The raw folder under `root` and the names of RAW_FILES missing there."""
    raw = Path(root).expanduser() / "FashionMNIST" / "raw"
    return raw, [name for name in RAW_FILES if not (raw / name).is_file()]


def check_present(root: str | Path, download: bool) -> None:
    """Before a run: unless it may download them, the four raw files must be there."""
    raw, missing = missing_files(root)
    if missing and not download:
        raise not_loadable(raw, f"missing {', '.join(missing)} (data.download=false)")


def load_fashion_mnist(root: str | Path, download: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read the 60k train and 10k test images and labels through torchvision's loader."""
    check_present(root, download)
    try:
        train = FashionMNIST(str(Path(root).expanduser()), train=True, download=download)
        test = FashionMNIST(str(Path(root).expanduser()), train=False, download=download)
    except Exception as exc:  # torchvision's reader fails on bad files with asserts, KeyError, TypeError, ...
        raw, missing = missing_files(root)
        if missing:
            raise not_loadable(raw, f"missing {', '.join(missing)} (download failed: {type(exc).__name__})") from None
        detail = " ".join(str(exc).split()) or "bad header"
        raise not_loadable(raw, f"unreadable IDX files ({type(exc).__name__}: {detail})") from None
    raw, _ = missing_files(root)
    for split, dataset in (("train", train), ("t10k", test)):
        check_split(raw, split, dataset.data, dataset.targets)
    return train.data, train.targets, test.data, test.targets


def check_split(raw: Path, split: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    """The IDX files of a split must hold N images of 28x28 and N labels in 0-9."""
    problem = None
    if tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        problem = f"{split}-images-idx3-ubyte holds images of shape {tuple(images.shape)}, expected (N, 28, 28)"
    elif len(labels) != len(images):
        problem = f"{split}-labels-idx1-ubyte holds {len(labels)} labels for {len(images)} images"
    elif labels.min() < 0 or labels.max() >= NUM_CLASSES:
        problem = f"{split}-labels-idx1-ubyte holds labels outside 0-{NUM_CLASSES - 1}"
    if problem:
        raise UserError(f"Fashion-MNIST in {raw} is not usable: {problem}")


def split_indices(n: int, valid_ratio: float, subset: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded shuffle of range(n), optionally cut to `subset`, split into (train, valid) indices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if subset is not None:
        perm = perm[:subset]
    n_valid = round(valid_ratio * len(perm))
    if not 0 < n_valid < len(perm):
        raise UserError(
            f"data.valid_ratio={valid_ratio} splits {len(perm)} images into {len(perm) - n_valid} train and "
            f"{n_valid} valid images; both need at least one (change data.valid_ratio or data.subset)"
        )
    return perm[n_valid:], perm[:n_valid]


def normalization_stats(images: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of uint8 images scaled to [0, 1]: per pixel, global, or identity ('none')."""
    x = images.float().div(255)
    if kind == "pixel":
        mean, std = x.mean(0), x.std(0)
        return mean, torch.where(std == 0, torch.ones_like(std), std)
    if kind == "global":
        return x.mean(), x.std()
    return torch.zeros(()), torch.ones(())


def prepare(cfg: DictConfig, seed: int, device: torch.device) -> Splits:
    """Load, split by `seed`, compute normalization on the train split only, move everything to `device`."""
    train_x, train_y, test_x, test_y = load_fashion_mnist(cfg.root, cfg.download)
    train_idx, valid_idx = split_indices(len(train_x), cfg.valid_ratio, cfg.subset, seed)
    mean, std = normalization_stats(train_x[train_idx], cfg.normalize)
    tensors = (train_x[train_idx], train_y[train_idx], train_x[valid_idx], train_y[valid_idx], test_x, test_y, mean, std)
    return Splits(*(t.to(device) for t in tensors))


def random_affine_params(n: int, degrees: float, translate: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample parameters as torchvision's RandomAffine draws them: angle ~ U(-degrees, degrees),
    translation in whole pixels, round(U(-translate * 28, translate * 28)) on each axis."""
    angle = (torch.rand(n, device=device) * 2 - 1) * degrees
    max_shift = translate * 28
    shift = torch.round((torch.rand(n, 2, device=device) * 2 - 1) * max_shift)
    return angle, shift


def affine(x: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate (degrees, counter-clockwise) about the centre and shift (pixels, x then y) each image of a
    (N, C, H, W) batch, nearest interpolation and zero fill: torchvision's F.affine, batched."""
    n, _, h, w = x.shape
    rad = angle * (math.pi / 180)
    cos, sin = torch.cos(rad), torch.sin(rad)
    # affine_grid maps output to input coordinates in [-1, 1] (square images): the inverse transform.
    tx, ty = shift[:, 0] * (2 / w), shift[:, 1] * (2 / h)
    theta = torch.stack(
        [torch.stack([cos, sin, -cos * tx - sin * ty], 1), torch.stack([-sin, cos, sin * tx - cos * ty], 1)], 1
    )
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """RandomHorizontalFlip(cfg.hflip) then RandomAffine(cfg.degrees, (cfg.translate,) * 2), independently per image."""
    if cfg.hflip > 0:
        flip = torch.rand(len(x), device=x.device) < cfg.hflip
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if cfg.degrees > 0 or cfg.translate > 0:
        x = affine(x, *random_affine_params(len(x), cfg.degrees, cfg.translate, x.device))
    return x
