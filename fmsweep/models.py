"""The four architectures of the practical, their dropout, the input wrapper and the L2 penalty."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fmsweep.errors import UserError

NUM_CLASSES = 10
IMAGE_SIZE = 28
MASK32 = 0xFFFFFFFF


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash of each element of int64 `x` (values below 2**32): xor-shifts and odd
    multiplies, each product below 2**63 so that no int64 overflows."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & MASK32
    return (x >> 16) ^ x


class Dropout(nn.Module):
    """Dropout (as nn.Dropout) whose mask is a hash of the layer's key, the number of training batches it has drawn
    for (`draws`) and the element's index: a counter-based generator with no RNG state. A run draws the same masks
    alone, stacked with others in a pack (under vmap each member hashes its own key) or replayed in a CUDA graph,
    and a resumed run continues its stream once `draws` is set to the batches it trained (`seek_dropout`). The key
    and the count are not saved with the weights: `seed_dropout` derives the keys from the run's seed."""

    key: torch.Tensor
    draws: torch.Tensor

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.register_buffer("key", torch.zeros((), dtype=torch.int64), persistent=False)
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        stream = mix32(mix32(self.key ^ (self.draws & MASK32)))
        index = torch.arange(x.numel(), device=x.device).view(x.shape)
        uniform = (mix32((mix32(index ^ stream) + stream) & MASK32) >> 8).float() * 2.0**-24
        self.draws += 1
        return x * (uniform >= self.p) / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def dropout_layers(net: nn.Module) -> list[Dropout]:
    return [m for m in net.modules() if isinstance(m, Dropout)]


def seed_dropout(net: nn.Module, seed: int) -> None:
    """Give each dropout layer of `net` its own stream of the run's `seed` (any size, folded to 32 bits)."""
    folded = torch.tensor((seed ^ (seed >> 32)) & MASK32)
    for i, layer in enumerate(dropout_layers(net)):
        layer.key.copy_(mix32(mix32(folded) ^ i))


def seek_dropout(net: nn.Module, batches: int) -> None:
    """Set the dropout streams of `net` to where a run that trained `batches` batches stands."""
    for layer in dropout_layers(net):
        layer.draws.fill_(batches)


class Linear(nn.Module):
    """Logistic regression on the 784 pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(IMAGE_SIZE * IMAGE_SIZE, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


class FullyConnected(nn.Module):
    """Multilayer perceptron with ReLU and optional input / hidden dropout."""

    def __init__(self, hidden: Sequence[int] = (256, 256), input_dropout: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout:
            layers.append(Dropout(input_dropout))
        width = IMAGE_SIZE * IMAGE_SIZE
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU()]
            if dropout:
                layers.append(Dropout(dropout))
            width = units
        layers.append(nn.Linear(width, NUM_CLASSES))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


class VanillaCNN(nn.Module):
    """LeNet-like: [conv5x5-ReLU-maxpool] stages, then dropout-linear-ReLU blocks, then linear."""

    def __init__(
        self, channels: Sequence[int] = (16, 32, 64), hidden: Sequence[int] = (128, 64), dropout: float = 0.0
    ) -> None:
        super().__init__()
        features: list[nn.Module] = []
        in_ch, size = 1, IMAGE_SIZE
        for out_ch in channels:
            features += [nn.Conv2d(in_ch, out_ch, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)]
            in_ch, size = out_ch, size // 2
        self.features = nn.Sequential(*features)
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_ch * size * size
        for units in hidden:
            layers += [Dropout(dropout), nn.Linear(width, units), nn.ReLU()]
            width = units
        layers.append(nn.Linear(width, NUM_CLASSES))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class FancyCNN(nn.Module):
    """VGG-like: 2 x [conv3x3-BN-ReLU] per stage, maxpool between stages, global average pool, linear."""

    def __init__(self, channels: Sequence[int] = (64, 128, 256), dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for i, out_ch in enumerate(channels):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]
                in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), Dropout(dropout), nn.Linear(in_ch, NUM_CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def check_range(x: torch.Tensor) -> None:
    """Float images must lie in [0, 1]: 0-255 floats would be normalized as if far too bright and predict badly
    without a word. A host sync (min and max), hence only in `Classifier.forward`, which training never calls with
    floats: its batches reach `net` through `normalize`, its evaluations pass uint8."""
    if not x.numel():
        return
    low, high = torch.stack(torch.aminmax(x)).tolist()
    if not 0 <= low <= high <= 1:  # NaN too
        raise UserError(
            f"the model takes raw images, uint8 in [0, 255] or float in [0, 1]; got {x.dtype} values in "
            f"[{low:g}, {high:g}] (pixels of 0-255 as floats: divide them by 255)"
        )


class Classifier(nn.Module):
    """A network together with its input normalization.

    Accepts raw images: uint8 in [0, 255] or float in [0, 1] (other floats are refused), shaped (28, 28),
    (N, 28, 28) or (N, 1, 28, 28); returns logits (N, 10). Training feeds `net` through `normalize` directly.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer(
            "mean", mean.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE) if mean.numel() > 1 else mean.reshape(())
        )
        self.register_buffer("std", std.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE) if std.numel() > 1 else std.reshape(()))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw images (as `forward` takes them) as the normalized (N, 1, 28, 28) float input of `net`."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        x = x.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE).to(self.mean.dtype)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            check_range(x)
        return self.net(self.normalize(x))


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of squared weights of matrices and kernels; biases and BatchNorm parameters (1-D) are excluded."""
    return sum((p.pow(2).sum() for p in model.parameters() if p.ndim >= 2), torch.zeros(()))


def num_parameters(model: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
