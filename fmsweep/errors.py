"""The one exception type for mistakes of the user (bad config, wrong folder, bad file)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn


class UserError(Exception):
    """Something the user gave is wrong; entry points print it as one line and exit with code 2."""


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message` of an exception from a library."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is a UserError (one line on stderr, exit 2) like any other."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}")


def exit_with(error: Exception, code: int = 2) -> NoReturn:
    """Print `error` as the one line `fmsweep: error: <message>` on stderr and exit with `code`."""
    print("fmsweep: error: " + " ".join(str(error).splitlines()), file=sys.stderr)
    sys.exit(code)


class Interrupted(Exception):
    """A stop signal arrived; the run saved its last.pt and can be resumed. `stopped`: where each run of the pack
    that had not finished stood then (train.run_pack fills it in), for what a sweep job records of it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.stopped: dict[Path, str] = {}


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite; the checkpoints of the last good epoch are kept."""
