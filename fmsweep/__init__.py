"""fmsweep: the Fashion-MNIST practical as Hydra sweeps.

The Python API: `load_model` (a run's best model, ready to predict) and `CLASSES` (the class names, in label order).
Importing fmsweep is cheap: torch loads only when `load_model` is first used."""
from __future__ import annotations

from typing import Any

__all__ = ["CLASSES", "load_model"]

# the ten Fashion-MNIST classes; label k (a model's logit k) is CLASSES[k]
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def __getattr__(name: str) -> Any:
    """`fmsweep.load_model`, imported on first use: torch loads only when a model does."""
    if name == "load_model":
        from fmsweep.checkpoint import load_model

        return load_model
    raise AttributeError(f"module 'fmsweep' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API, `load_model` too, though it is imported only on first use."""
    return sorted(__all__)
