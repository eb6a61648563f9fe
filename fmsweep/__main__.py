"""`fmsweep [overrides]` or `python -m fmsweep [overrides]`: the Hydra entry point of one training run (or of each
job of a sweep). Only Hydra is imported up front: torch and TensorBoard load when a run starts, so that --help,
shell completion and a mistyped command line answer at once."""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path
from typing import cast

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.types import RunMode
from omegaconf import DictConfig

from fmsweep import command_line
from fmsweep.errors import Interrupted, TrainingDiverged, UserError, exit_with
from fmsweep.sweep.lock import RunDirBusy


def register_sweeper() -> None:
    """Register fmsweep's sweepers with Hydra: its plugin scan does not see hydra_plugins/ through the
    import hook of an editable install. The scan re-imports Hydra's own plugin modules, so it runs first."""
    plugins = Plugins.instance()
    from hydra_plugins.fmsweep_sweeper.reporting_sweeper import ReportingSweeper
    from hydra_plugins.fmsweep_sweeper.search_sweeper import SearchSweeper

    plugins.register(ReportingSweeper)
    plugins.register(SearchSweeper)


def task(cfg: DictConfig) -> float:
    """Train one configuration in Hydra's output directory (or, in a sweep with pack=K, a pack of its jobs that
    the sweeper put there); return its best valid loss."""
    from fmsweep import tracking, train
    from fmsweep.sweep import packing

    hydra_cfg = cast(DictConfig, HydraConfig.get())
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        if multirun and (run_dir / packing.MANIFEST).is_file():
            return packing.run(run_dir, hydra_cfg)
        return train.run(cfg, run_dir)
    except Interrupted as exc:
        if multirun and exc.signum == signal.SIGTERM:  # a cancelled sweep job: none of its runs is completed
            for stopped_dir, stopped_at in exc.stopped.items():
                tracking.record_cancelled(stopped_dir, exc.signum, stopped_at)
        print(
            f"fmsweep: stopped by {signal.Signals(exc.signum).name}, {run_dir / 'last.pt'} saved; "
            f"resume with: {resume_command(multirun, hydra_cfg)}",
            file=sys.stderr,
        )
        sys.exit(128 + exc.signum)  # also ends a sweep of the basic launcher, which goes on past exceptions
    except RunDirBusy as exc:  # the run dir is another process's: record nothing in it
        if multirun:
            raise
        exit_with(exc)
    except Exception as exc:
        tracking.record_failure(run_dir, exc)
        if multirun or not isinstance(exc, (UserError, TrainingDiverged)):
            raise  # in a sweep: the job fails, the others go on and the sweeper reports it
        exit_with(exc, 2 if isinstance(exc, UserError) else 1)


run_app = hydra.main(version_base="1.3", config_path="conf", config_name="config")(task)


def main() -> None:
    """The console entry: Hydra's errors about the command line become one line and exit code 2.

    HYDRA_FULL_ERROR makes Hydra raise them to us instead of printing them (set it yourself for full traces)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        run_app()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        run_app()
    except Exception as exc:
        message = command_line.one_line(exc, sys.argv[1:])
        if message is None:
            raise
        exit_with(UserError(message))


def resume_command(multirun: bool, hydra_cfg: DictConfig) -> str:
    """The command that continues this run in the same directory; in a sweep, the sweep's (its record names the
    command line: a job's own arguments are its launcher's)."""
    if multirun:
        return shlex.join(["fmsweep", "resume", str(hydra_cfg.sweep.dir)])
    args = [arg for arg in sys.argv[1:] if not arg.startswith("hydra.run.dir=")]
    return shlex.join(["python", "-m", "fmsweep", *args, f"hydra.run.dir={hydra_cfg.runtime.output_dir}"])


register_sweeper()

if __name__ == "__main__":
    main()
