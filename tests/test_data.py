from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from fmsweep import data
from fmsweep.errors import UserError


def test_loader_reads_the_idx_files_through_torchvision(data_root: Path) -> None:
    train_x, train_y, test_x, test_y = data.load_fashion_mnist(data_root, download=False)
    assert train_x.shape == (500, 28, 28) and train_x.dtype == torch.uint8
    assert test_x.shape == (200, 28, 28)
    assert sorted(train_y.unique().tolist()) == list(range(10))


def test_missing_dataset_names_the_folder_and_the_four_files(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        data.load_fashion_mnist(tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert all(name in message for name in data.RAW_FILES)


def test_split_is_seeded_disjoint_and_sized_by_ratio() -> None:
    train, valid = data.split_indices(1000, 0.2, None, seed=3)
    assert len(train) == 800 and len(valid) == 200
    assert not set(train.tolist()) & set(valid.tolist())
    again, _ = data.split_indices(1000, 0.2, None, seed=3)
    other, _ = data.split_indices(1000, 0.2, None, seed=4)
    assert torch.equal(train, again) and not torch.equal(train, other)
    train, valid = data.split_indices(1000, 0.2, 100, seed=3)
    assert len(train) == 80 and len(valid) == 20


def test_normalization_uses_the_train_split_only(data_root: Path) -> None:
    cfg = OmegaConf.create({"root": str(data_root), "download": False, "valid_ratio": 0.5, "normalize": "pixel", "subset": None})
    splits = data.prepare(cfg, seed=0, device=torch.device("cpu"))
    train_mean = splits.train_x.float().div(255).mean(0)
    assert torch.allclose(splits.mean, train_mean)
    all_mean = torch.cat([splits.train_x, splits.valid_x]).float().div(255).mean(0)
    assert not torch.allclose(splits.mean, all_mean)


def test_constant_pixels_get_unit_std() -> None:
    images = torch.zeros(10, 28, 28, dtype=torch.uint8)
    images[:, 5, 5] = torch.arange(10, dtype=torch.uint8)
    mean, std = data.normalization_stats(images, "pixel")
    assert std[0, 0] == 1 and std[5, 5] < 1
    mean, std = data.normalization_stats(images, "global")
    assert mean.ndim == 0 and std.ndim == 0
