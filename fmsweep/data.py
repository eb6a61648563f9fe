"""Fashion-MNIST as tensors on the training device: load, split, normalization statistics."""

from __future__ import annotations

import contextlib
import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from fmsweep.errors import UserError
from fmsweep.models import IMAGE_SIZE, NUM_CLASSES

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
UBYTE = 0x08  # the IDX type code of unsigned bytes
TRAIN_IMAGES = 60_000  # in Fashion-MNIST's training set, which data.subset cuts and data.valid_ratio splits
MIN_VALID_PER_CLASS = 10  # images of the valid split per class, on average, below which a run is refused


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


def raw_folder(root: str | Path) -> Path:
    """Where the four files lie under `root` (torchvision's layout)."""
    return Path(root).expanduser() / "FashionMNIST" / "raw"


def not_loadable(raw: Path, problem: str) -> UserError:
    """The error for a data folder that does not hold a readable Fashion-MNIST."""
    return UserError(
        f"Fashion-MNIST not loadable from {raw}: {problem}; expected the four files "
        f"{', '.join(RAW_FILES)} (set data.root to the folder that holds FashionMNIST/raw)"
    )


def missing_files(root: str | Path) -> tuple[Path, list[str]]:
    """The raw folder under `root` and the names of RAW_FILES missing there."""
    raw = raw_folder(root)
    return raw, [name for name in RAW_FILES if not (raw / name).is_file()]


def check_present(root: str | Path, download: bool) -> None:
    """Before a run: unless it may download them, the four raw files must be there."""
    raw, missing = missing_files(root)
    if missing and not download:
        raise not_loadable(raw, f"missing {', '.join(missing)} (data.download=false)")


def fetch(root: str | Path) -> None:
    """Download the missing raw files through torchvision (its mirrors, md5 checks and unpacking).

    A failed download is one UserError naming its cause and what to do without internet, and leaves no
    folder behind that it created."""
    raw, missing = missing_files(root)
    if not missing:
        return
    from torchvision.datasets import FashionMNIST  # slow to import (its model zoo): only when downloading

    created = [folder for folder in (raw.parent.parent, raw.parent, raw) if not folder.exists()]
    print(f"fmsweep: downloading Fashion-MNIST to {raw}", file=sys.stderr)
    try:
        FashionMNIST(str(raw.parent.parent), train=True, download=True)
    except Exception as exc:  # noqa: BLE001 (torchvision: RuntimeError listing every mirror tried, each with its error)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only while empty
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        cause = lines[-1] if lines else type(exc).__name__
        raise UserError(
            f"cannot download Fashion-MNIST: missing {', '.join(missing)} in {raw}, and the download failed "
            f"({cause}); without internet, copy the raw files there, or into <dir>/FashionMNIST/raw and run with "
            f"data.root=<dir>, and add data.download=false"
        ) from None


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An IDX file of unsigned bytes with `ndim` dimensions (the format of the MNIST files), checked against its
    header: magic number, type code, dimension count, and a size that matches the announced shape."""
    content = path.read_bytes()
    header = 4 + 4 * ndim
    if len(content) < header or content[:2] != b"\0\0" or content[2] != UBYTE or content[3] != ndim:
        raise ValueError(f"{path.name} is not an IDX file of unsigned bytes with {ndim} dimension(s)")
    shape = struct.unpack(f">{ndim}I", content[4:header])
    if len(content) - header != math.prod(shape):
        raise ValueError(f"{path.name} holds {len(content) - header} bytes of data, its header announces {shape}")
    if not math.prod(shape):
        return torch.empty(shape, dtype=torch.uint8)  # frombuffer refuses an empty buffer
    # one copy into a writable buffer, the header skipped in place (a slice first would copy the 47 MB twice)
    return torch.frombuffer(bytearray(content), dtype=torch.uint8, offset=header).reshape(shape)


def load_fashion_mnist(
    root: str | Path, download: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 60k train and 10k test images (uint8) and labels (int64) from the raw IDX files under `root`."""
    check_present(root, download)
    if download:
        fetch(root)
    raw = raw_folder(root)
    tensors = {}
    try:
        for name in RAW_FILES:
            tensors[name] = read_idx(raw / name, 3 if "images" in name else 1)
    except (OSError, ValueError) as exc:
        raise not_loadable(raw, f"unreadable IDX files ({exc})") from None
    for split in ("train", "t10k"):
        check_split(raw, split, tensors[f"{split}-images-idx3-ubyte"], tensors[f"{split}-labels-idx1-ubyte"])
    train_x, train_y, test_x, test_y = tensors.values()
    return train_x, train_y.long(), test_x, test_y.long()


def check_split(raw: Path, split: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    """The IDX files of a split must hold N >= 1 images of 28x28 and N labels in 0-9."""
    problem = None
    if tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        problem = f"{split}-images-idx3-ubyte holds images of shape {tuple(images.shape)}, expected (N, 28, 28)"
    elif len(images) == 0:
        problem = f"{split}-images-idx3-ubyte holds no images"
    elif len(labels) != len(images):
        problem = f"{split}-labels-idx1-ubyte holds {len(labels)} labels for {len(images)} images"
    elif labels.max() >= NUM_CLASSES:
        problem = f"{split}-labels-idx1-ubyte holds labels outside 0-{NUM_CLASSES - 1}"
    if problem:
        raise UserError(f"Fashion-MNIST in {raw} is not usable: {problem}")


def split_sizes(n: int, valid_ratio: float, subset: int | None) -> tuple[int, int]:
    """The (train, valid) sizes of `n` images cut to `subset`, as `split_indices` splits them; a UserError when
    either part is empty."""
    total = n if subset is None else min(n, subset)
    n_valid = round(valid_ratio * total)
    if not 0 < n_valid < total:
        raise UserError(
            f"data.valid_ratio={valid_ratio} splits {total} images into {total - n_valid} train and "
            f"{n_valid} valid images; both need at least one (change data.valid_ratio or data.subset)"
        )
    return total - n_valid, n_valid


def check_valid_size(valid_ratio: float, subset: int | None) -> None:
    """Before a run: the valid split of Fashion-MNIST's TRAIN_IMAGES cut to `subset` must hold MIN_VALID_PER_CLASS
    images per class on average, else its loss and accuracy (which pick the best epoch) are noise."""
    _, n_valid = split_sizes(TRAIN_IMAGES, valid_ratio, subset)
    needed = MIN_VALID_PER_CLASS * NUM_CLASSES
    if n_valid < needed:
        cut = subset if subset is not None else f"null (all {TRAIN_IMAGES} images)"
        raise UserError(
            f"data.subset={cut} with data.valid_ratio={valid_ratio} leaves {n_valid} valid images, fewer than "
            f"{needed} ({MIN_VALID_PER_CLASS} per class on average); raise data.subset or data.valid_ratio"
        )


def split_indices(n: int, valid_ratio: float, subset: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded shuffle of range(n), optionally cut to `subset`, split into (train, valid) indices."""
    n_train, n_valid = split_sizes(n, valid_ratio, subset)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: n_train + n_valid]
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


Raw = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def prepare(cfg: DictConfig, seed: int, device: torch.device, raw: Raw | None = None) -> Splits:
    """Load (unless `raw` holds what load_fashion_mnist read), split by `seed`, compute normalization on the
    train split only, move everything to `device`."""
    train_x, train_y, test_x, test_y = raw or load_fashion_mnist(cfg.root, cfg.download)
    train_idx, valid_idx = split_indices(len(train_x), cfg.valid_ratio, cfg.subset, seed)
    mean, std = normalization_stats(train_x[train_idx], cfg.normalize)
    tensors = (
        train_x[train_idx],
        train_y[train_idx],
        train_x[valid_idx],
        train_y[valid_idx],
        test_x,
        test_y,
        mean,
        std,
    )
    return Splits(*(t.to(device) for t in tensors))
