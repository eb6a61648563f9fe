"""Asking SLURM's commands (squeue, sacct) from the sweep's tools: what one printed, None where SLURM is not
installed (the files alone decide), or Silent where it is but did not answer: never a guess from its silence."""

from __future__ import annotations

import subprocess

SLURM_TIMEOUT_S = 10


class Silent(Exception):
    """A SLURM command that exists did not answer (it failed, or timed out): what it said, in one line."""


def slurm_output(args: list[str]) -> str | None:
    """The output of a SLURM command; None where it does not exist (no SLURM here: the files alone decide); Silent
    when it fails or times out. An unknown job id is an answer: squeue fails on a list of only those, once SLURM
    forgot them."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=SLURM_TIMEOUT_S, check=True).stdout
    except subprocess.CalledProcessError as exc:
        if "Invalid job id" in (exc.stderr or ""):
            return ""
        said = (exc.stderr or "").strip().splitlines()
        raise Silent(f"{args[0]}: {said[-1] if said else f'exit code {exc.returncode}'}") from None
    except subprocess.TimeoutExpired:
        raise Silent(f"{args[0]}: no answer in {SLURM_TIMEOUT_S} s") from None
    except FileNotFoundError:
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        raise Silent(f"{args[0]}: {exc}") from None
