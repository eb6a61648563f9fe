"""Validation of a composed run config: every key known, every value of the right type and range.

conf/ holds the values (and is their only source); this module only says what a value may be. A bad
value becomes one UserError naming the key, the value and what was expected, e.g.
`epochs must be an integer >= 1, got 0`. `ValidateBeforeRun` (a Hydra callback, see conf/config.yaml)
checks a single run before Hydra creates its output directory; `train.run` checks every run again, so
sweep jobs and configs composed in Python are covered too.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import torch
from hydra.experimental.callback import Callback
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fmsweep import augment, checkpoint, data, models, schedule
from fmsweep.errors import UserError, exit_with, first_line
from fmsweep.sweep import lock


@dataclass(frozen=True)
class Check:
    """What a config value may be: a predicate and the words that say so."""

    expected: str
    ok: Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(low: int, high: int | None = None) -> Check:
    """An int (not a bool) in [low, high]."""
    expected = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    return Check(expected, lambda v: _is_int(v) and v >= low and (high is None or v <= high))


def number(low: float, high: float = math.inf, brackets: str = "[]") -> Check:
    """A finite int or float between low and high; `brackets` says which ends are included, e.g. "[)"."""
    if high == math.inf:
        expected = f"a number {'>=' if brackets[0] == '[' else '>'} {low:g}"
    else:
        expected = f"a number in {brackets[0]}{low:g}, {high:g}{brackets[1]}"

    def ok(v: Any) -> bool:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return False
        above = v >= low if brackets[0] == "[" else v > low
        below = v <= high if brackets[1] == "]" else v < high
        return above and below

    return Check(expected, ok)


def one_of(*options: str) -> Check:
    """One of the given strings."""
    return Check(f"one of {', '.join(options)}", lambda v: isinstance(v, str) and v in options)


def optional(check: Check) -> Check:
    """null, or what `check` accepts."""
    return Check(f"null or {check.expected}", lambda v: v is None or check.ok(v))


BOOLEAN = Check("true or false", lambda v: isinstance(v, bool))
PATH = Check("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")
DEVICE = Check("auto, cpu, cuda or cuda:N", lambda v: isinstance(v, str))  # parsed by resolve_device
PROBABILITY = number(0, 1, "[)")
SIZES = Check("a list of integers >= 1", lambda v: isinstance(v, list) and all(_is_int(u) and u >= 1 for u in v))

# Every key of the run outside the model and optimizer groups: all required, no others allowed.
RUN_KEYS: dict[str, Check] = {
    "seed": integer(0, 2**64 - 1),
    "epochs": integer(1),
    "batch_size": integer(1),
    "device": DEVICE,
    "cuda.bf16": BOOLEAN,
    "cuda.graph": BOOLEAN,
    "pack": integer(1),
    "stack": Check("auto, true or false", lambda v: isinstance(v, bool) or v == "auto"),
    "early_stop.patience": optional(integer(1)),
    "early_stop.min_delta": number(0),
    "data.root": PATH,
    "data.download": BOOLEAN,
    "data.valid_ratio": number(0, 1, "()"),
    "data.normalize": one_of("none", "pixel", "global"),
    "data.subset": optional(integer(2)),
    "reg.l2": number(0),
    "reg.input_dropout": PROBABILITY,
    "reg.dropout": PROBABILITY,
}
# Constructor arguments of models, optimizers, augmentations and schedules, checked where the chosen class takes
# them; the others a class takes (betas, eps, ...) are left to the class itself in a trial construction.
ARGUMENTS: dict[str, Check] = {
    "model.hidden": SIZES,
    "model.channels": SIZES,
    "model.input_dropout": PROBABILITY,
    "model.dropout": PROBABILITY,
    "optimizer.lr": number(0, brackets="(]"),
    "optimizer.weight_decay": number(0),
    "optimizer.momentum": PROBABILITY,
    "optimizer.nesterov": BOOLEAN,
    "aug.hflip": number(0, 1),
    "aug.degrees": number(0, 180),
    "aug.translate": number(0, 1),
    "scheduler.warmup_epochs": number(0),
    "scheduler.final": number(0, 1),
    "scheduler.pct_start": number(0, 1, "()"),
    "scheduler.div_factor": number(1),
    "scheduler.final_div_factor": number(1),
    "scheduler.milestones": SIZES,
    "scheduler.gamma": number(0, 1, "(]"),
}


def show(value: Any) -> str:
    """A value as the user would type it: null, true, 'text', [1, 2]."""
    return repr(value) if isinstance(value, str) else json.dumps(value, default=str)


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda when available, else cpu; cpu, cuda and cuda:N must exist on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"device must be {DEVICE.expected}, got {show(name)}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"device={name} asked for, but CUDA is not available on this machine (use device=auto or cpu)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device={name} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name from /proc/cpuinfo (Linux; else the architecture)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every non-dict value in a nested dict."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _known_beside(key: str) -> list[str]:
    """The names a user may have meant for `key`: those of its section, else the top-level keys and groups."""
    section = key.rpartition(".")[0]
    inside = [k.removeprefix(f"{section}.") for k in RUN_KEYS if section and k.startswith(f"{section}.")]
    names = inside or [*RUN_KEYS, "model", "optimizer", "aug", "scheduler"]
    return list(dict.fromkeys(name.split(".")[0] for name in names))


def _check(key: str, value: Any, check: Check) -> None:
    if not check.ok(value):
        raise UserError(f"{key} must be {check.expected}, got {show(value)}")


def _check_arguments(group: str, settings: dict[str, Any], cls: type, skip: set[str]) -> None:
    """Keys of `group` must be constructor arguments of `cls`; those in ARGUMENTS must pass their check."""
    accepted = set(inspect.signature(cls).parameters) - skip
    for key, value in settings.items():
        if key.startswith("_") and key.endswith("_"):
            continue
        if key not in accepted:
            raise UserError(
                f"{group}.{key} is not a setting of {cls.__name__} (it takes: {', '.join(sorted(accepted))})"
            )
        if f"{group}.{key}" in ARGUMENTS:
            _check(f"{group}.{key}", value, ARGUMENTS[f"{group}.{key}"])


def _check_model(settings: dict[str, Any]) -> None:
    """A model config must build a network of fmsweep.models that takes 28x28 images."""
    target = settings.get("_target_")
    _check_arguments("model", settings, checkpoint.network_class(target), set())
    try:
        # one image through the real network on the CPU: milliseconds, where shape inference on the meta device
        # would first import torch's compiler stack (about a second); the global RNG is left as it was
        with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            network = checkpoint.build_network(settings)
            network.eval()(torch.zeros(1, 1, models.IMAGE_SIZE, models.IMAGE_SIZE))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 (whatever the network raises on a 28x28 image is the user's config's fault)
        raise UserError(f"model {target} does not fit 28x28 images with {show(settings)} ({first_line(exc)})") from None


def _check_optimizer(settings: dict[str, Any]) -> None:
    """An optimizer config must be a partial torch.optim optimizer that accepts its settings."""
    target, cls = settings.get("_target_"), None
    if isinstance(target, str) and target.startswith("torch.optim."):
        with contextlib.suppress(ImportError, ValueError):
            cls = get_class(target)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise UserError(f"optimizer._target_ must name a torch.optim optimizer class, got {show(target)}")
    if settings.get("_partial_") is not True:
        raise UserError(
            f"optimizer._partial_ must be true (the parameters come later), got {show(settings.get('_partial_'))}"
        )
    _check_arguments("optimizer", settings, cls, {"params"})
    try:
        instantiate(settings)([torch.zeros(1, requires_grad=True)])
    except Exception as exc:  # noqa: BLE001 (whatever the optimizer raises on these settings is the user's config's fault)
        raise UserError(f"optimizer {target} rejects {show(settings)} ({first_line(exc.__cause__ or exc)})") from None


def _check_component(group: str, settings: dict[str, Any], module: ModuleType, kind: str) -> None:
    """A config of `group` must build one of `module`'s classes (an augmentation, a schedule) from its settings."""
    target = settings.get("_target_")
    module_name, _, name = str(target).rpartition(".")
    cls = getattr(module, name, None)
    if module_name != module.__name__ or not isinstance(cls, type):
        raise UserError(f"{group}._target_ must name {kind} of {module.__name__}, got {show(target)}")
    _check_arguments(group, settings, cls, set())


def validate(cfg: DictConfig) -> None:
    """Raise a one-line UserError for the first bad key or value of a composed run config, for a data.subset and
    data.valid_ratio that leave a valid split too small to measure anything, or for a data.root without the data
    set when data.download is false.

    `cfg` is the config of a run, as train.run gets it, or Hydra's whole config (its `hydra` node is ignored).
    """
    run = OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"])
    try:
        tree = OmegaConf.to_container(run, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise UserError(f"config does not resolve: {first_line(exc)}") from None
    assert isinstance(tree, dict)
    groups = {group: tree.pop(group, None) for group in ("model", "optimizer", "aug", "scheduler")}
    for group, settings in groups.items():
        if not isinstance(settings, dict):
            raise UserError(f"{group} must be a config group (e.g. {group}=<option>), got {show(settings)}")
    leaves = _leaves(cast(dict[str, Any], tree))
    for key, check in RUN_KEYS.items():
        if key not in leaves:
            raise UserError(f"{key} is missing from the config; it must be {check.expected}")
        _check(key, leaves[key], check)
    unknown = sorted(set(leaves) - set(RUN_KEYS))
    if unknown:
        key = unknown[0]
        raise UserError(f"unknown config key {key}={show(leaves[key])} (known there: {', '.join(_known_beside(key))})")
    resolve_device(leaves["device"])
    _check_model(groups["model"])
    _check_optimizer(groups["optimizer"])
    _check_component("aug", groups["aug"], augment, "an augmentation")
    _check_component("scheduler", groups["scheduler"], schedule, "a schedule")
    data.check_valid_size(leaves["data.valid_ratio"], leaves["data.subset"])
    data.check_present(leaves["data.root"], leaves["data.download"])


class ValidateBeforeRun(Callback):
    """Hydra callback: a bad single run, or one whose run dir another process trains in, ends as `fmsweep: error:
    <message>`, exit 2, before Hydra creates or writes its output directory (on_run_start runs before run_job); the
    data set is downloaded here too, so that a failed download leaves no run dir. A sweep is checked as a whole by
    its sweeper (fmsweep.sweep.prelaunch)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            validate(config)
            lock.check_free(Path(config.hydra.run.dir))  # another process's run dir: refused before Hydra writes
            if config.data.download:
                data.fetch(config.data.root)
        except UserError as exc:
            exit_with(exc)
