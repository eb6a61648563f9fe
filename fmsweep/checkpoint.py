"""Checkpoints: atomic save, safe load (weights_only), and the best model of a run as a ready classifier."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from fmsweep import models
from fmsweep.errors import UserError
from fmsweep.files import atomic_write

FORMAT_VERSION = 1
BEST = "best_model.pt"
LAST = "last.pt"


def save(state: dict[str, Any], path: str | Path) -> None:
    """torch.save `state` (tensors and builtins only) atomically."""
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    atomic_write(path, buffer.getvalue())


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True: no code in the file can run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no checkpoint at {path}") from None
    except Exception as exc:  # truncated, garbled or unsafe pickles all land here
        raise UserError(f"{path} is not a readable fmsweep checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} is not an fmsweep checkpoint of format {FORMAT_VERSION}")
    return state


def build_network(model_config: dict[str, Any]) -> torch.nn.Module:
    """Instantiate a network of fmsweep.models from its (resolved) config."""
    target = str(model_config.get("_target_", ""))
    module, _, name = target.rpartition(".")
    if module != models.__name__ or not isinstance(getattr(models, name, None), type):
        raise UserError(f"model target {target!r} is not one of fmsweep.models")
    return instantiate(model_config)


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> models.Classifier:
    """The best model of a run, with its input normalization, in eval mode.

    Feed it raw images (uint8 0-255 or float 0-1, shaped (28, 28), (N, 28, 28) or (N, 1, 28, 28));
    it returns logits over the 10 classes.
    """
    path = Path(run_dir) / BEST
    if not path.is_file():
        raise UserError(f"{run_dir} holds no {BEST}: not a (finished) fmsweep run directory")
    state = load(path)
    norm = state["normalization"]
    model = models.Classifier(build_network(state["model_config"]), norm["mean"], norm["std"])
    try:
        model.net.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not fit its model config ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval()
