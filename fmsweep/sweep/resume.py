"""`fmsweep resume DIR`: run a sweep again from its sweep.json, without its command line.

The command that made the sweep runs again in-process, from the folder it ran in, with its sweep dir pinned to
DIR; the launcher then launches only the jobs that neither completed nor still run (resuming each from its
last.pt), and the sweep ends as the first run would have."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path

from fmsweep.errors import ArgumentParser, UserError, exit_with
from fmsweep.results.runs import override_key
from fmsweep.sweep import manifest

SWEEP_DIR = "hydra.sweep.dir"
DETACH = "hydra.sweeper.detach"
# a value that Hydra's override grammar reads as it is, unquoted
PLAIN = re.compile(r"[A-Za-z0-9_/.+@%:-]+")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="fmsweep resume", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="the sweep dir (it holds sweep.json)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--detach",
        dest="detach",
        action="store_const",
        const=True,
        help="submit the remaining jobs and return at once (hydra.sweeper.detach=true)",
    )
    mode.add_argument(
        "--attach",
        dest="detach",
        action="store_const",
        const=False,
        help="wait for the remaining jobs and write the results (hydra.sweeper.detach=false)",
    )
    return parser.parse_args(argv)


def hydra_string(value: str) -> str:
    """`value` as an override's value that Hydra reads back as this one string: quoted when it holds a character
    of Hydra's grammar (a comma would make it a sweep, a space or ~ an error)."""
    if PLAIN.fullmatch(value):
        return value
    # in a quoted value, backslashes before a quote (or the closing one) are halved, and ${ is an interpolation
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    return "'" + escaped.replace("${", "\\${") + "'"


def command(recorded: list[str], sweep_dir: str, detach: bool | None) -> list[str]:
    """The recorded arguments with the sweep dir pinned to `sweep_dir` (an absolute path) and, when `detach` is
    given, hydra.sweeper.detach set to it; the recorded settings of these keys are dropped."""
    dropped = {SWEEP_DIR} | ({DETACH} if detach is not None else set())
    args = [arg for arg in recorded if "=" not in arg or override_key(arg) not in dropped]
    args.append(f"{SWEEP_DIR}={hydra_string(sweep_dir)}")
    if detach is not None:
        args.append(f"{DETACH}={str(detach).lower()}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Command line entry point; a user error (no sweep.json, its folder gone) is one line and exit code 2."""
    try:
        args = parse_args(argv)
        sweep = manifest.require(args.sweep_dir)
        if not Path(sweep.cwd).is_dir():
            raise UserError(f"{sweep.cwd}, where the sweep of {args.sweep_dir} was started, is no directory now")
        arguments = command(sweep.command, os.path.abspath(args.sweep_dir), args.detach)
    except UserError as exc:
        exit_with(exc)
    print(f"fmsweep: resuming {args.sweep_dir}: {shlex.join(['fmsweep', *arguments])}", flush=True)
    os.chdir(sweep.cwd)
    sys.argv = ["fmsweep", *arguments]
    import fmsweep.__main__

    fmsweep.__main__.main()


if __name__ == "__main__":
    main()
