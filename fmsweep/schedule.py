"""Learning-rate schedules, built by the `scheduler` config group and stepped every batch.

A schedule is a pure function of the number of batches trained so far: the factor that multiplies the optimizer's
configured lr. It is computed with tensor operations on the training device, so that on CUDA it runs inside the
captured step (the optimizer's lr is then a device tensor, updated in place), and a resumed run, which knows how
many batches it trained, continues the schedule exactly: no state of its own to save.
"""

from __future__ import annotations

import math

import torch


class Constant:
    """The configured lr throughout (the practical's setting)."""

    def factor(self, step: torch.Tensor, steps_per_epoch: int, epochs: int) -> torch.Tensor:
        """The lr multiplier of the batch after `step` batches (a float tensor on the device)."""
        return torch.ones_like(step)


class Cosine:
    """Linear warm-up from 0 over `warmup_epochs`, then cosine decay to `final` × lr at the end of training."""

    def __init__(self, warmup_epochs: float = 0.0, final: float = 0.0) -> None:
        self.warmup_epochs, self.final = warmup_epochs, final

    def factor(self, step: torch.Tensor, steps_per_epoch: int, epochs: int) -> torch.Tensor:
        warmup, total = self.warmup_epochs * steps_per_epoch, epochs * steps_per_epoch
        progress = ((step - warmup) / max(total - warmup, 1)).clamp(0, 1)
        decay = self.final + (1 - self.final) * 0.5 * (1 + torch.cos(math.pi * progress))
        return torch.where(step < warmup, (step + 1) / max(warmup, 1), decay)


class OneCycle:
    """torch's OneCycleLR (cosine annealing, two phases) with the configured lr as its max_lr: from lr/div_factor
    up to lr over the first pct_start of training, then down to lr/(div_factor·final_div_factor)."""

    def __init__(self, pct_start: float = 0.3, div_factor: float = 25.0, final_div_factor: float = 1e4) -> None:
        self.pct_start, self.div_factor, self.final_div_factor = pct_start, div_factor, final_div_factor

    def factor(self, step: torch.Tensor, steps_per_epoch: int, epochs: int) -> torch.Tensor:
        total = epochs * steps_per_epoch
        peak = self.pct_start * total - 1
        start, low = 1 / self.div_factor, 1 / (self.div_factor * self.final_div_factor)
        up = (step / max(peak, 1)).clamp(0, 1)
        down = ((step - peak) / max(total - 1 - peak, 1)).clamp(0, 1)
        rising = 1 + (start - 1) / 2 * (1 + torch.cos(math.pi * up))
        falling = low + (1 - low) / 2 * (1 + torch.cos(math.pi * down))
        return torch.where(step <= peak, rising, falling)


class MultiStep:
    """The lr times gamma at each milestone epoch: epochs from `milestones` on train at lr·gamma^(milestones passed)."""

    def __init__(self, milestones: list[int] | tuple[int, ...] = (), gamma: float = 0.1) -> None:
        self.milestones, self.gamma = list(milestones), gamma

    def factor(self, step: torch.Tensor, steps_per_epoch: int, epochs: int) -> torch.Tensor:
        epoch = torch.div(step, steps_per_epoch, rounding_mode="floor") + 1  # the epoch this batch belongs to
        passed = sum(((epoch >= m).float() for m in self.milestones), torch.zeros_like(step))
        return torch.pow(torch.full_like(step, self.gamma), passed)
