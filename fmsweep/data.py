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


def load_fashion_mnist(root: str | Path, download: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read the 60k train and 10k test images and labels through torchvision's loader."""
    root = Path(root).expanduser()
    raw = root / "FashionMNIST" / "raw"
    try:
        train = FashionMNIST(str(root), train=True, download=download)
        test = FashionMNIST(str(root), train=False, download=download)
    except (RuntimeError, ValueError, AssertionError, OSError) as exc:
        missing = [name for name in RAW_FILES if not (raw / name).is_file()]
        if missing:
            problem = f"missing {', '.join(missing)}" + ("" if download else " (data.download=false)")
        else:
            problem = f"unreadable IDX files ({exc})"
        raise UserError(
            f"Fashion-MNIST not loadable from {raw}: {problem}; expected the four files "
            f"{', '.join(RAW_FILES)} (set data.root to the folder that holds FashionMNIST/raw)"
        ) from None
    return train.data, train.targets, test.data, test.targets


def split_indices(n: int, valid_ratio: float, subset: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded shuffle of range(n), optionally cut to `subset`, split into (train, valid) indices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if subset is not None:
        perm = perm[:subset]
    n_valid = round(valid_ratio * len(perm))
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
