"""The training batches of a pack of runs (one run is a pack of one), straight from tensors on the device.

One object owns what a training batch is made of: each run's training images and labels on the device, its input
normalization, its augmentation and its data order. The loop reads `for b, x, y in loader.batches(first)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from fmsweep.augment import FlipAffine


@dataclass
class Source:
    """One run's part of the loader: uint8 training images (N, 28, 28) and labels on the device, the run's input
    normalization (raw images to network input), its augmentation and its own generator, seeded by the run's seed,
    which draws its data order and augmentation, so that these do not depend on what else trains beside it."""

    images: torch.Tensor
    labels: torch.Tensor
    normalize: Callable[[torch.Tensor], torch.Tensor]
    aug: FlipAffine
    generator: torch.Generator


class TrainLoader:
    """Epochs of shuffled, augmented, normalized training batches of K runs at once: each batch is x (K, B, 1, 28, 28)
    and y (K, B), row k from run k. All runs have the same number of training images and batch size.

    Each epoch starts with `plan`: every run's generator draws that epoch's order and augmentation parameters
    up front. Its generator state from before the draw is all that a resume in the middle of the epoch needs."""

    def __init__(self, sources: list[Source], batch_size: int) -> None:
        self.sources, self.batch_size = sources, batch_size
        self.n = len(sources[0].labels)
        self.num_batches = -(-self.n // batch_size)
        with torch.no_grad():  # unaugmented images are normalized once, here; each batch then only gathers
            self.images = [s.images if s.aug.active else s.normalize(s.images) for s in sources]
        self.order: list[torch.Tensor] = []
        self.params: list[torch.Tensor | None] = []

    def plan(self, states: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Draw the epoch's order and augmentation of every run, from the generator states `states` (a resumed
        epoch) or from where each generator stands; return the states the draws started from."""
        if states is not None:
            for source, state in zip(self.sources, states):
                source.generator.set_state(state)
        started = [s.generator.get_state() for s in self.sources]
        self.order = [torch.randperm(self.n, generator=s.generator, device=s.generator.device) for s in self.sources]
        self.params = [s.aug.draw(self.n, s.generator) if s.aug.active else None for s in self.sources]
        return started

    def batches(self, first: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(batch number, x, y) of the planned epoch from batch `first` on; the last batch may be smaller."""
        for b in range(first, self.num_batches):
            window = slice(b * self.batch_size, (b + 1) * self.batch_size)
            xs, ys = [], []
            for source, images, order, params in zip(self.sources, self.images, self.order, self.params):
                idx = order[window]
                x = images.index_select(0, idx)  # on CPU several times faster than images[idx]
                if params is not None:
                    x = source.normalize(source.aug.apply(x.unsqueeze(1).float().div_(255), params[window]))
                xs.append(x)
                ys.append(source.labels.index_select(0, idx))
            if len(xs) == 1:  # a lone run: a view, not a copy of its batch
                yield b, xs[0].unsqueeze(0), ys[0].unsqueeze(0)
            else:
                yield b, torch.stack(xs), torch.stack(ys)
