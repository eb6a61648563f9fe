"""Hydra's errors about a command line (unknown option of a group, unknown key, override syntax, a group set to
null) as one line that says what was wrong and, where a close name exists, what was probably meant."""
from __future__ import annotations

import difflib
from pathlib import Path

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parent / "conf"


def groups() -> dict[str, list[str]]:
    """Config group -> its options, as conf/ holds them (the hydra/ groups aside)."""
    return {
        folder.name: sorted(p.stem for p in folder.glob("*.yaml"))
        for folder in sorted(CONF.iterdir())
        if folder.is_dir() and folder.name != "hydra" and any(folder.glob("*.yaml"))
    }


def known_keys() -> list[str]:
    """Every dotted key of the default config, and the keys each option of each config group adds."""
    keys: set[str] = set()

    def collect(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key != "defaults" and not str(key).startswith("_"):
                    collect(value, f"{prefix}{key}.")
        else:
            keys.add(prefix.rstrip("."))

    collect(OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml")), "")
    for group, options in groups().items():
        for option in options:
            content = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml")) or {}
            prefix = "" if "# @package _global_" in (CONF / group / f"{option}.yaml").read_text() else f"{group}."
            collect(content, prefix)
    keys.discard("hydra")
    return sorted(k for k in keys if k and not k.startswith("hydra."))


def suggest(word: str, candidates: list[str]) -> str:
    """`; did you mean X?` for the closest of `candidates`, or "" when none is close."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def suggest_key(key: str, keys: list[str]) -> str:
    """A close key of the same section (data.rot: data.root), else any key whose last part is close to the
    whole of `key` (lrr: optimizer.lr)."""
    section, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == section}
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {siblings[close[0]]}?"
    leaves = {k.rpartition(".")[2]: k for k in keys}
    close = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.6)
    return f"; did you mean {leaves[close[0]]}?" if close else ""


def one_line(exc: BaseException, argv: list[str]) -> str | None:
    """The one-line message for an error Hydra raised about the command line `argv`, or None for other errors."""
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        options = groups().get(group, list(exc.options or []))
        return (f"{group}={option}: no such option of {group} (its options: {', '.join(options)})"
                f"{suggest(option, options)}")
    if isinstance(exc, ConfigCompositionException) and str(exc).startswith("Could not override '"):
        key = str(exc).split("'")[1]
        override = next((arg for arg in argv if arg.split("=")[0].lstrip("+~") == key), key)
        keys = known_keys()
        section = key.rpartition(".")[0]
        near = sorted({k.removeprefix(f"{section}.").split(".")[0] for k in keys if k.startswith(f"{section}.")}
                      if section else {k.split(".")[0] for k in keys})
        hint = suggest_key(key, keys) or (f" (known keys there: {', '.join(near)})" if near else "")
        return f"{override}: unknown config key {key}{hint}"
    if isinstance(exc, OverrideParseException):
        return f"cannot parse the override {exc.override!r}: {exc.message.strip().splitlines()[0]}"
    if isinstance(exc, ValueError) and str(exc).startswith("Config group override must be a string or a list"):
        nulls = [arg for arg in argv if arg.split("=")[0] in groups() and arg.endswith("=null")]
        group = nulls[0].split("=")[0] if nulls else "a config group"
        options = groups().get(group, [])
        return f"{group}=null: {group} takes one of its options ({', '.join(options)}), not null"
    return None
