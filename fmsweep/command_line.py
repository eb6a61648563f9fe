"""Hydra's errors about a command line (unknown option of a group, unknown key or group, override syntax, a group
set to null, a sweep without -m, a + on what exists) as one line that says what was wrong and, where a close name
exists, what was probably meant."""

from __future__ import annotations

import difflib
import re
import shlex
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

CONF = Path(__file__).resolve().parent / "conf"


def groups() -> dict[str, list[str]]:
    """Config group -> its options, as conf/ holds them (the hydra/ groups aside)."""
    return {
        folder.name: sorted(p.stem for p in folder.glob("*.yaml"))
        for folder in sorted(CONF.iterdir())
        if folder.is_dir() and folder.name != "hydra" and any(folder.glob("*.yaml"))
    }


def dotted_keys(node: object, prefix: str = "") -> set[str]:
    """The dotted keys of the leaves of a config container (its defaults list and _private_ keys aside)."""
    if not isinstance(node, dict):
        return {prefix.rstrip(".")}
    return {
        key
        for name, value in node.items()
        if name != "defaults" and not str(name).startswith("_")
        for key in dotted_keys(value, f"{prefix}{name}.")
    }


def known_keys() -> list[str]:
    """Every dotted key of the default config, and the keys each option of each config group adds."""
    keys = dotted_keys(OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml")))
    for group, options in groups().items():
        for option in options:
            content = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml")) or {}
            prefix = "" if "# @package _global_" in (CONF / group / f"{option}.yaml").read_text() else f"{group}."
            keys |= dotted_keys(content, prefix)
    return sorted(k for k in keys if k and k != "hydra" and not k.startswith("hydra."))


def composed_hydra(argv: list[str], wrong: str) -> DictConfig:
    """The hydra node of the config as the hydra/ group choices of `argv` but the `wrong` one compose it: the keys
    of the sweeper and the launcher in effect (hydra/sweeper=optuna, hydra/launcher=slurm) and every config group
    (hydra.runtime.choices)."""
    choices = [arg for arg in argv if arg.lstrip("+~").startswith("hydra/") and arg != wrong]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=choices, return_hydra_config=True).hydra


def suggest(word: str, candidates: list[str]) -> str:
    """`; did you mean X?` for the closest of `candidates`, or "" when none is close."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def suggest_key(key: str, keys: list[str]) -> str:
    """A close key of the same section (data.rot: data.root), else, for a key without a section, any key whose last
    part is close to it (lrr: optimizer.lr)."""
    section, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == section}
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {siblings[close[0]]}?"
    if section:
        return ""
    leaves = {k.rpartition(".")[2]: k for k in keys}
    close = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.6)
    return f"; did you mean {leaves[close[0]]}?" if close else ""


def sweeps_need_multirun(argv: list[str]) -> str:
    """The sweeps of a command line without -m, the command that runs them, and for a key swept over values a,b
    (not a group: model=fc,linear) the list key=[a,b] it may have meant."""
    parser = OverridesParser.create()
    sweeps = [
        o
        for o in (parser.parse_override(arg) for arg in argv if "=" in arg and not arg.startswith("-"))
        if o.is_sweep_override()
    ]
    lines = [str(o.input_line) for o in sweeps]
    names = lines[0] if len(lines) == 1 else f"{', '.join(lines[:-1])} and {lines[-1]}"
    lists = [
        f"{line.partition('=')[0]}=[{line.partition('=')[2]}]"
        for o, line in zip(sweeps, lines)
        if o.value_type == ValueType.SIMPLE_CHOICE_SWEEP
        and o.key_or_group not in groups()
        and "/" not in o.key_or_group
    ]
    what = "is a sweep, and a sweep needs" if len(lines) == 1 else "are sweeps, and sweeps need"
    alternative = f", or {'the list' if len(lists) == 1 else 'the lists'} {' '.join(lists)}" if lists else ""
    return f"{names} {what} -m: did you mean `{shlex.join(['fmsweep', '-m', *lines])} ...`{alternative}?"


def one_line(exc: BaseException, argv: list[str]) -> str | None:
    """The one-line message for an error Hydra raised about the command line `argv`, or None for other errors."""
    message = str(exc)
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        options = groups().get(group, list(exc.options or []))
        return (
            f"{group}={option}: no such option of {group} (its options: {', '.join(options)}){suggest(option, options)}"
        )
    if isinstance(exc, ConfigCompositionException) and message.startswith(
        ("Could not override '", "Could not delete from config. '")
    ):
        key = message.split("'")[1]
        override = next((arg for arg in argv if arg.split("=")[0].lstrip("+~") == key), key)
        hydra_cfg = composed_hydra(argv, override)
        app = key.split(".")[0] != "hydra"
        keys = known_keys() if app else sorted(dotted_keys(OmegaConf.to_container(hydra_cfg), "hydra."))
        section = key.rpartition(".")[0]
        near = sorted(
            {k.removeprefix(f"{section}.").split(".")[0] for k in keys if k.startswith(f"{section}.")}
            if section
            else {k.split(".")[0] for k in keys}
        )
        candidates = [*keys, *hydra_cfg.runtime.choices] if app else keys  # a misspelled group: modle=fc
        hint = suggest_key(key, candidates) or (f" (known keys there: {', '.join(near)})" if near else "")
        return f"{override}: unknown config key {key}{hint}"
    if isinstance(exc, ConfigCompositionException) and message.startswith(
        ("Sweep parameters '", "Ambiguous value for argument '")
    ):
        return sweeps_need_multirun(argv)
    if isinstance(exc, ConfigCompositionException) and message.startswith("Could not append to config. "):
        fixed = message.splitlines()[1].partition("'")[2].rpartition("'")[0]  # Either remove + prefix: '<it>'
        key = message.split("'")[1]
        return f"+{fixed}: {key} already exists and + only adds new keys: did you mean {fixed} (or ++{fixed})?"
    if isinstance(exc, ConfigCompositionException) and message.startswith("Multiple values for "):
        group = message.removeprefix("Multiple values for ").partition(". ")[0]
        added = [arg for arg in argv if arg.startswith("+") and arg.lstrip("+").split("=")[0] == group]
        if added:
            return (
                f"{added[0]}: {group} already has an option (in the defaults) and + only adds new groups: "
                f"did you mean {added[0].lstrip('+')}?"
            )
    if isinstance(exc, OverrideParseException):
        return f"cannot parse the override {exc.override!r}: {exc.message.strip().splitlines()[0]}"
    missing = re.search(r"Environment variable '([^']+)' not found", message)
    if isinstance(exc, InterpolationResolutionError) and missing:
        return (
            f"the config reads the environment variable {missing[1]} (${{oc.env:{missing[1]}}}), which is not "
            f"set: export {missing[1]}=... here and where the jobs run"
        )
    if isinstance(exc, ValueError) and message.startswith("Config group override must be a string or a list"):
        nulls = [arg for arg in argv if arg.split("=")[0] in groups() and arg.endswith("=null")]
        group = nulls[0].split("=")[0] if nulls else "a config group"
        options = groups().get(group, [])
        return f"{group}=null: {group} takes one of its options ({', '.join(options)}), not null"
    return None
