"""A search's space (`hydra/sweeper=optuna`): its distributions from `hydra.sweeper.params` and the command line's
sweep overrides, the sampler that draws from it, and its values as people read them (job dir names, reports)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import HydraException
from omegaconf import OmegaConf

from fmsweep.errors import UserError

if TYPE_CHECKING:
    import optuna

# the names hydra.sweeper.sampler takes: Optuna's built-in samplers that need no package beyond fmsweep's own
# (CmaEsSampler needs cmaes, GPSampler and QMCSampler scipy; BruteForceSampler takes no continuous range)
SAMPLERS = ("tpe", "random", "nsgaii")


@functools.cache
def parser() -> OverridesParser:
    """Hydra's override parser, built once (building it takes a few ms)."""
    return OverridesParser.create()


def distribution(override: Override) -> Any:
    """The Optuna distribution of a sweep override, as Hydra's Optuna sweeper reads them: interval(a,b) a float
    range (tag int: integers; tag log: log scale), range(a,b[,step]) integers, a,b,c or choice(...) a category."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    try:
        if isinstance(value, IntervalSweep):
            assert value.start is not None and value.end is not None  # Hydra's parser sets both
            log_scale = "log" in value.tags
            if "int" in value.tags:
                return IntDistribution(int(value.start), int(value.end), log=log_scale)
            return FloatDistribution(float(value.start), float(value.end), log=log_scale)
        if isinstance(value, RangeSweep):
            assert value.start is not None and value.stop is not None and value.step is not None  # as above
            stop = value.stop - value.step
            if all(float(v).is_integer() for v in (value.start, value.stop, value.step)):
                return IntDistribution(int(value.start), int(stop), step=int(value.step))
            return FloatDistribution(float(value.start), float(stop), step=float(value.step))
        if isinstance(value, ChoiceSweep):
            choices = override.sweep_iterator(transformer=Transformer.encode)  # encode: each a str, int, float or bool
            return CategoricalDistribution(cast("list[str | int | float | bool]", list(choices)))
    except ValueError as exc:
        raise UserError(f"{override.input_line}: not a search space ({exc})") from None
    raise UserError(f"{override.input_line}: not a search space (use interval(a,b), range(a,b), choice(a,b) or a,b)")


def param_override(key: str, value: Any) -> Override:
    """The entry `key: value` of hydra.sweeper.params as the override `key=value` (a list is a choice of its items,
    a string is what the command line would say, any other value is fixed); a bad one is a UserError naming it."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, list):
        text = f"choice({','.join(Override._get_value_element_as_str(item) for item in value)})"
    else:
        text = value if isinstance(value, str) else Override._get_value_element_as_str(value)
    line = f"{key}={text}"
    try:
        override = parser().parse_overrides([line])[0]
    except HydraException as exc:  # Hydra's message: the error, among lines that name the override and the docs
        reason = "; ".join(s for s in str(exc).splitlines() if not s.startswith(("Error parsing override", "See ")))
        raise UserError(f"hydra.sweeper.params.{key}: {line}: {reason}") from None
    if override.is_sweep_override():
        try:
            distribution(override)
        except UserError as exc:
            raise UserError(f"hydra.sweeper.params.{key}: {exc}") from None
    return override


def split(arguments: list[str], params: Mapping[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
    """The fixed overrides and the search space (key -> distribution) of `params` (hydra.sweeper.params) and the
    command line's overrides `arguments`. The command line wins for a key in both: its sweep replaces the param's
    range, its plain value fixes the key. The fixed overrides: params' first, then the command line's."""
    given = parser().parse_overrides(arguments)
    on_command_line = {o.key_or_group for o in given}
    from_params = [param_override(str(key), value) for key, value in (params or {}).items()]
    fixed: list[str] = []
    space: dict[str, Any] = {}
    for override in [*(o for o in from_params if o.key_or_group not in on_command_line), *given]:
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            fixed.append(cast(str, override.input_line))
    if not space:
        raise UserError("hydra/sweeper=optuna needs a search space: e.g. 'optimizer.lr=tag(log,interval(1e-4,1e-1))'")
    return fixed, space


def describe(dist: Any) -> str:
    """A distribution in words, e.g. `log interval(1e-05, 0.1)`, `int interval(1, 8) step 2`, `choice(fc, cnn)`."""
    from optuna.distributions import IntDistribution

    if hasattr(dist, "choices"):
        return f"choice({', '.join(map(str, dist.choices))})"
    words = ["log"] * dist.log + ["int"] * isinstance(dist, IntDistribution)
    words.append(f"interval({dist.low!r}, {dist.high!r})")
    if dist.step is not None and not (isinstance(dist, IntDistribution) and dist.step == 1):
        words.append(f"step {dist.step!r}")
    return " ".join(words)


def corners(fixed: list[str], space: dict[str, Any]) -> list[list[str]]:
    """Trial overrides to check a search space with: every key at its low end, then at its high end, then each
    choice of each category (the other keys low)."""

    def ends(pick: int) -> dict[str, Any]:
        return {k: d.choices[pick] if hasattr(d, "choices") else (d.low, d.high)[pick] for k, d in space.items()}

    trials = [ends(0), ends(-1)]
    trials += [{**ends(0), key: choice} for key, d in space.items() for choice in getattr(d, "choices", ())]
    return [[*fixed, *(f"{k}={override_value(v)}" for k, v in trial.items())] for trial in trials]


def override_value(value: Any) -> str:
    """A sampled value as a Hydra override value."""
    return repr(value) if isinstance(value, float) else str(value)


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler `name` (one of SAMPLERS) of hydra.sweeper.sampler, seeded: tpe (Optuna's default), random, or
    nsgaii (a genetic algorithm: its first generation, 50 trials, is drawn at random)."""
    import optuna

    if name not in SAMPLERS:
        raise UserError(f"hydra.sweeper.sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    samplers = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "nsgaii": optuna.samplers.NSGAIISampler,
    }
    return samplers[name](seed=seed)


def readable(value: Any) -> str:
    """A sampled value as people read it: a float to 4 significant digits (0.006431, 1.235e-05, 3.0), anything
    else as its override value. Job dir names and reports show these; configs keep the full value."""
    if not isinstance(value, float):
        return override_value(value)
    text = f"{value:.4g}"
    return text if any(c in text for c in ".en") else f"{text}.0"  # 3.0, not the int 3


def display_overrides(overrides: list[str]) -> list[str]:
    """`overrides` with each float value that `readable` writes shorter written so, e.g. optimizer.lr=0.006431 for
    optimizer.lr=0.006431172050131994; every other override (1e-3 too) exactly as written."""
    shown = []
    for line in overrides:
        try:
            override = parser().parse_overrides([line])[0]
        except HydraException:  # not an override Hydra reads: shown as it is
            shown.append(line)
            continue
        value = override.value() if not override.is_sweep_override() else None
        key, _, written = line.partition("=")
        short = readable(value) if isinstance(value, float) else written
        shown.append(f"{key}={short}" if len(short) < len(written) else line)
    return shown
