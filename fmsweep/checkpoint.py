"""Checkpoints: atomic save, safe load (weights_only), and the best model of a run as a ready classifier."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

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
    except Exception as exc:  # noqa: BLE001 (truncated, garbled or unsafe pickles all land here)
        raise UserError(f"{path} is not a readable fmsweep checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} is not an fmsweep checkpoint of format {FORMAT_VERSION}")
    return state


def saved_epoch(path: str | Path) -> int | None:
    """The epoch that the checkpoint at `path` holds, or None when there is no readable one."""
    try:
        return load(path).get("epoch")
    except UserError:
        return None


def network_class(target: Any) -> type:
    """The class of fmsweep.models that a model config's `_target_` names."""
    module, _, name = str(target).rpartition(".")
    cls = getattr(models, name, None)
    if module != models.__name__ or not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise UserError(f"model target {target!r} is not one of fmsweep.models")
    return cls


def build_network(model_config: dict[str, Any]) -> torch.nn.Module:
    """Construct a network of fmsweep.models from its (resolved) config.

    The class is called directly, not through Hydra's instantiate: a config read from a checkpoint could
    otherwise name any callable in a nested `_target_`."""
    cls = network_class(model_config.get("_target_"))
    try:
        return cls(**{key: value for key, value in model_config.items() if key != "_target_"})
    except Exception as exc:  # noqa: BLE001 (the constructor's own complaint about its arguments)
        raise UserError(f"model config {model_config} does not build a network ({type(exc).__name__}: {exc})") from None


def best_model_path(path: str | Path) -> Path:
    """The best_model.pt that `path` (a run dir, or that file itself) stands for; else a UserError saying what
    `path` is instead."""
    path = Path(path)
    if path.is_file():
        if path.name != BEST:
            raise UserError(f"{path} is a file, not a run directory (pass the run directory or its {BEST})")
        return path
    if not path.is_dir():
        raise UserError(f"{path}: no such file or directory")
    if (path / BEST).is_file():
        return path / BEST
    if not (path / ".hydra").is_dir():
        if next(path.glob("*/.hydra/config.yaml"), None) is not None:
            raise UserError(
                f"{path} is a sweep directory, not a run directory: its best run on validation is "
                f"fmsweep.load_sweep({str(path)!r}).best(), and .load_model() loads it"
            )
        raise UserError(f"{path} is not an fmsweep run directory (no {BEST}, no .hydra/)")
    raise UserError(f"{path} holds no {BEST} yet: the run has not finished an epoch")


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> models.Classifier:
    """The best model of a run (its run dir, or its best_model.pt), with its input normalization, in eval mode
    and with frozen parameters: it predicts without building an autograd graph, no torch.no_grad() needed.

    Feed it raw images (uint8 0-255 or float 0-1, shaped (28, 28), (N, 28, 28) or (N, 1, 28, 28));
    it returns logits over the 10 classes (in the order of fmsweep.CLASSES). Floats outside [0, 1] (0-255 pixels
    not divided by 255, normalized images) are refused with a UserError rather than predicted badly.
    """
    path = best_model_path(run_dir)
    state = load(path)
    norm, model_config = state.get("normalization"), state.get("model_config")
    if not (
        isinstance(norm, dict)
        and isinstance(model_config, dict)
        and isinstance(state.get("state_dict"), dict)
        and all(isinstance(norm.get(key), torch.Tensor) for key in ("mean", "std"))
    ):
        raise UserError(f"{path} is not a best-model checkpoint (no model config, weights and normalization)")
    network = build_network(model_config)
    try:
        model = models.Classifier(network, norm["mean"], norm["std"])
        model.net.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not fit its model config ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval().requires_grad_(False)
