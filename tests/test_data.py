import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, fast_overrides
from omegaconf import OmegaConf

from fmsweep import data
from fmsweep.config import validate
from fmsweep.errors import UserError


def test_loader_reads_the_idx_files_through_torchvision(data_root: Path) -> None:
    train_x, train_y, test_x, _test_y = data.load_fashion_mnist(data_root, download=False)
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


@pytest.mark.parametrize(
    ("n", "ratio", "subset"), [(1000, 0.2, None), (1000, 0.2, 100), (500, 0.3, 2000), (60_000, 0.25, 498)]
)
def test_split_sizes_are_those_of_the_split(n: int, ratio: float, subset: int | None) -> None:
    train, valid = data.split_indices(n, ratio, subset, seed=1)
    assert data.split_sizes(n, ratio, subset) == (len(train), len(valid))


@pytest.mark.parametrize(("ratio", "subset", "valid"), [(0.2, 10, 2), (0.2, 497, 99), (0.001, None, 60)])
def test_a_valid_split_under_10_images_per_class_is_refused(ratio: float, subset: int | None, valid: int) -> None:
    with pytest.raises(UserError) as err:
        data.check_valid_size(ratio, subset)
    shown = subset if subset is not None else "null (all 60000 images)"
    assert str(err.value) == (
        f"data.subset={shown} with data.valid_ratio={ratio} leaves {valid} valid images, fewer "
        f"than 100 (10 per class on average); raise data.subset or data.valid_ratio"
    )


@pytest.mark.parametrize(("ratio", "subset"), [(0.2, 498), (0.2, None), (0.5, 200), (0.002, None)])
def test_a_valid_split_of_100_images_or_more_passes(ratio: float, subset: int | None) -> None:
    data.check_valid_size(ratio, subset)  # 498 * 0.2 = 99.6: rounded to 100, as the split rounds it


def test_validation_refuses_a_tiny_subset_but_not_the_tests_small_data_set(make_cfg) -> None:
    validate(make_cfg())  # 500 images here, but data.subset=null stands for the 60000 of Fashion-MNIST
    with pytest.raises(UserError, match=r"data.subset=10 with data.valid_ratio=0.2 leaves 2 valid images"):
        validate(make_cfg("data.subset=10"))


def test_a_tiny_subset_on_the_command_line_is_one_line_exit_2_and_no_run_dir(data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, "-m", "fmsweep", *fast_overrides(data_root), "data.subset=10", f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        (
            "fmsweep: error: data.subset=10 with data.valid_ratio=0.2 leaves 2 valid images, fewer than 100 "
            "(10 per class on average); raise data.subset or data.valid_ratio"
        )
    ]
    assert not run_dir.exists()


def test_normalization_uses_the_train_split_only(data_root: Path) -> None:
    cfg = OmegaConf.create(
        {"root": str(data_root), "download": False, "valid_ratio": 0.5, "normalize": "pixel", "subset": None}
    )
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
