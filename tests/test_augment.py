"""The batched on-device augmentation against torchvision's transforms on the same images."""

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from fmsweep.augment import FlipAffine, affine


def images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g)


@pytest.mark.parametrize(
    "angle,shift", [(0.0, (0, 0)), (10.0, (0, 0)), (-7.3, (2, -3)), (0.0, (-2, 1)), (45.0, (3, 3))]
)
def test_affine_matches_torchvision_for_fixed_parameters(angle: float, shift: tuple[int, int]) -> None:
    x = images(4)
    ours = affine(x, torch.full((4,), angle), torch.tensor([shift] * 4, dtype=torch.float))
    ref = TF.affine(x, angle=angle, translate=list(shift), scale=1.0, shear=[0.0, 0.0])
    mismatch = (ours != ref).float().mean().item()
    assert mismatch < 0.005, f"{mismatch:.2%} of pixels differ"


def test_each_image_gets_its_own_parameters() -> None:
    params = FlipAffine(0.5, 10.0, 0.1).draw(10_000, torch.Generator().manual_seed(0))
    angle, shift = params[:, 1], params[:, 2:]
    assert angle.abs().max() <= 10.0 and angle.std() > 5
    assert set(shift.unique().tolist()) <= set(range(-3, 4)) and shift.abs().max() == 3
    assert shift.float().mean().abs() < 0.1


def test_augmented_distribution_matches_torchvision() -> None:
    """Mean and spread of many augmentations of one image agree with torchvision's flip + affine."""
    torch.manual_seed(0)  # torchvision's draws
    n = 4000
    x = torch.zeros(1, 1, 28, 28)
    x[..., 6:14, 4:20] = 1.0
    aug = FlipAffine(0.5, 10.0, 0.1)
    ours = aug.apply(x.expand(n, -1, -1, -1).clone(), aug.draw(n, torch.Generator().manual_seed(0)))
    reference = T.Compose([T.RandomHorizontalFlip(0.5), T.RandomAffine(degrees=10, translate=(0.1, 0.1))])
    ref = torch.stack([reference(x[0]) for _ in range(n)])
    assert (ours.mean(0) - ref.mean(0)).abs().max() < 0.06
    assert (ours.std(0) - ref.std(0)).abs().max() < 0.06
    assert not torch.equal(ours[0], ours[1])


def test_flip_only_flips_about_half() -> None:
    x = images(2000)
    aug = FlipAffine(0.5, 0.0, 0.0)
    out = aug.apply(x, aug.draw(2000, torch.Generator().manual_seed(0)))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert torch.all(flipped ^ kept)
    assert 0.45 < flipped.float().mean() < 0.55
