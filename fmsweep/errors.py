"""The one exception type for mistakes of the user (bad config, wrong folder, bad file)."""
from __future__ import annotations

import sys
from typing import NoReturn


class UserError(Exception):
    """Something the user gave is wrong; entry points print it as one line and exit with code 2."""


def exit_with(error: Exception, code: int = 2) -> NoReturn:
    """Print `error` as the one line `fmsweep: error: <message>` on stderr and exit with `code`."""
    print("fmsweep: error: " + " ".join(str(error).splitlines()), file=sys.stderr)
    sys.exit(code)


class Interrupted(Exception):
    """A stop signal arrived; the run saved its last.pt and can be resumed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite; the checkpoints of the last good epoch are kept."""
