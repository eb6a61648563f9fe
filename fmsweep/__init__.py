"""fmsweep: the Fashion-MNIST practical as Hydra sweeps."""
from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    """`fmsweep.load_model`, imported on first use: torch loads only when a model does."""
    if name == "load_model":
        from fmsweep.checkpoint import load_model

        return load_model
    raise AttributeError(f"module 'fmsweep' has no attribute {name!r}")
