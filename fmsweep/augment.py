"""Training-set augmentation, batched on the training device: the one place that knows what an augmentation does.

The `aug` config group builds an augmentation (its `_target_`). The train loader asks it for each epoch's random
draws with `draw` (one row per training image, from the run's own generator, so that a run's draws depend only on
its seed and resume exactly) and applies them to each batch with `apply`; the summary prints it; the benchmark
asks it for the practical's torchvision transforms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class FlipAffine:
    """RandomHorizontalFlip(hflip) then RandomAffine(degrees, translate=(translate, translate)), drawn per image as
    torchvision draws them: angle ~ U(-degrees, degrees), a shift of round(U(-translate·28, translate·28)) whole
    pixels on each axis; nearest interpolation, zero fill. All zero: no augmentation."""

    def __init__(self, hflip: float = 0.0, degrees: float = 0.0, translate: float = 0.0) -> None:
        self.hflip, self.degrees, self.translate = hflip, degrees, translate

    @property
    def active(self) -> bool:
        """Whether the images change at all (else the loader normalizes them once, up front)."""
        return bool(self.hflip or self.degrees or self.translate)

    def __str__(self) -> str:
        if not self.active:
            return "none"
        return (
            f"RandomHorizontalFlip(p={self.hflip}), "
            f"RandomAffine(degrees={self.degrees}, translate=({self.translate}, {self.translate}))"
        )

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The random parameters of `n` images, one row each: flip (0 or 1), angle (degrees), shift x, shift y."""
        u = torch.rand(n, 4, generator=generator, device=generator.device)
        flip = (u[:, 0] < self.hflip).float()
        angle = (u[:, 1] * 2 - 1) * self.degrees
        shift = torch.round((u[:, 2:] * 2 - 1) * (self.translate * 28))
        return torch.cat([flip[:, None], angle[:, None], shift], 1)

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Augment float images (N, 1, 28, 28) with their rows of `draw`."""
        if self.hflip:
            x = torch.where(params[:, 0, None, None, None] > 0, x.flip(-1), x)
        if self.degrees or self.translate:
            x = affine(x, params[:, 1], params[:, 2:])
        return x

    def torchvision(self) -> list[torch.nn.Module]:
        """The same augmentation as per-image torchvision transforms of PIL images (the practical's pipeline)."""
        if not self.active:
            return []
        from torchvision import transforms  # slow to import: only the benchmark needs it

        return [
            transforms.RandomHorizontalFlip(self.hflip),
            transforms.RandomAffine(degrees=self.degrees, translate=(self.translate, self.translate)),
        ]


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
