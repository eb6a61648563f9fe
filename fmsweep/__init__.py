"""fmsweep: the Fashion-MNIST practical as Hydra sweeps.

The Python API: `load_sweep` (a sweep's results as pandas DataFrames, its best run), `load_model` (a run's best
model, ready to predict) and `CLASSES` (the class names, in label order). Importing fmsweep is cheap: pandas and
torch load only when a function that needs them is first used."""

from __future__ import annotations

from typing import Any

from fmsweep.classes import CLASSES  # the ten class names, label k is CLASSES[k]; a leaf the figures share

__all__ = ["CLASSES", "load_model", "load_sweep"]


def __getattr__(name: str) -> Any:
    """`fmsweep.load_model` and `fmsweep.load_sweep`, imported on first use: torch loads only when a model does."""
    if name == "load_model":
        from fmsweep.checkpoint import load_model

        return load_model
    if name == "load_sweep":
        from fmsweep.results.api import load_sweep

        return load_sweep
    raise AttributeError(f"module 'fmsweep' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API, `load_model` and `load_sweep` too, though they are imported only on first use."""
    return sorted(__all__)
