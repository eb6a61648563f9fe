"""Hydra's basic sweeper, made to check the whole sweep before launching it, pack jobs that can train together
(pack=K), show the jobs' status while they run, and end with the jobs that failed (fmsweep.sweep.prelaunch,
fmsweep.sweep.packing, fmsweep.sweep.live_status, fmsweep.sweep.summary).

Hydra accepts sweepers only from the hydra_plugins package, hence this module."""
from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus


class ReportingSweeper(BasicSweeper):
    """BasicSweeper that validates every job first (a bad one: one line, exit 2, nothing launched), launches packs of
    jobs as one job each, shows a live status of the jobs while they run, and ends with a summary of the jobs that
    did not complete (exit code 1 if any)."""

    def sweep(self, arguments: list[str]) -> Any:
        from fmsweep.sweep import prelaunch  # imported late: Hydra imports every plugin module at start-up
        from fmsweep.errors import UserError, exit_with
        from fmsweep.sweep.summary import report

        assert self.config is not None and self.hydra_context is not None and self.launcher is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        batches = self.split_arguments(parser.parse_overrides([*self._parse_config(), *arguments]), None)
        job_overrides = [list(job) for batch in batches for job in batch]
        try:
            configs = prelaunch.check_jobs(self.hydra_context.config_loader, self.config, job_overrides)
            if is_slurm(self.launcher):
                prelaunch.check_slurm_request(self.launcher.params)
        except UserError as exc:
            exit_with(exc)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        returns, error = launch(self.launcher, self.config, job_overrides, configs, self.max_batch_size)
        report(sweep_dir, error)
        return returns


def is_slurm(launcher: Any) -> bool:
    return type(launcher).__name__ == "SlurmLauncher"


def launch(launcher: Any, config: Any, job_overrides: list[list[str]], configs: list[Any],
           batch_size: int | None = None, others: Sequence[str] = ()) -> tuple[list[Any], Exception | None]:
    """Launch checked jobs (their overrides and composed configs, numbered consecutively) in packs as their `pack`
    says, `batch_size` launcher jobs at a time, with the live status on stdout meanwhile (its counts including
    `others`, the states of the sweep's jobs launched apart); return the launcher's returns and the first failed
    job's error."""
    from omegaconf import OmegaConf

    from fmsweep.sweep import packing
    from fmsweep.sweep.live_status import Job, LiveStatus

    sweep_dir = Path(config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    packs = packing.plan(configs)
    launched = packing.launch_overrides(sweep_dir, job_overrides, configs, packs)
    jobs = [Job(str(configs[i].hydra.sweep.subdir), int(configs[i].epochs), task)
            for task, members in enumerate(packs) for i in members]
    if len(packs) < len(configs):
        print(f"fmsweep: {len(configs)} jobs in {len(packs)} launcher jobs (pack={max(c.pack for c in configs)})")
    # jobs of the basic launcher print their own progress here: their status comes one line per change
    stream = sys.stdout if type(launcher).__name__ != "BasicLauncher" else _Lines(sys.stdout)
    returns, error, size, first_num = [], None, batch_size or len(launched), int(configs[0].hydra.job.num)
    kind, before, interrupted = type(launcher).__name__, submitted(sweep_dir), None
    quiet = _quiet_controllers(sweep_dir) if kind == "LocalLauncher" else nullcontext()
    with LiveStatus(sweep_dir, jobs, stream=stream, slurm=is_slurm(launcher), others=others), quiet:
        try:
            for first in range(0, len(launched), size):
                results = launcher.launch(launched[first : first + size], initial_job_idx=first_num + first)
                for result in results:  # the error of a failed job, once all jobs of the batch ended; not through
                    if result.status == JobStatus.FAILED:  # return_value, which also prints "Error executing job"
                        raise result._return_value
                returns.append(results)
        except KeyboardInterrupt:
            if kind == "BasicLauncher":  # its jobs run here and handle SIGINT themselves (fmsweep.__main__.task)
                raise
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while the line is made: no traceback
            interrupted = sorted(submitted(sweep_dir) - before, key=lambda i: [int(n) for n in i.split("_")])
        except Exception as exc:
            error = exc
    if interrupted is not None:
        print(interrupted_line(is_slurm(launcher), interrupted, config.hydra), file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    return returns, error


# how long a Ctrl-C'd sweep of submitit_local waits for its jobs, which got the Ctrl-C too, to save and stop:
# submitit's controller of a job gives it 1 s after SIGINT, then kills it
LOCAL_STOP_S = 10


def submitted(sweep_dir: Path) -> set[str]:
    """The ids of the submitit jobs launched from `sweep_dir` so far, from their folders in its .submitit/ (SLURM
    job ids, `<array id>_<task index>` in a job array; for submitit_local, the pid of each job's controller)."""
    from fmsweep.sweep.live_status import SUBMITIT_FOLDER

    folders = sweep_dir / ".submitit"
    return {name for name in (os.listdir(folders) if folders.is_dir() else []) if SUBMITIT_FOLDER.fullmatch(name)}


def interrupted_line(slurm: bool, job_ids: list[str], hydra_cfg: Any) -> str:
    """The one line of a sweep whose launching command got Ctrl-C while its submitit jobs (`job_ids`) ran. SLURM
    jobs keep running: their ids and how to watch or cancel them. The processes of submitit_local got the Ctrl-C
    too (they are in the terminal's process group): they save their last.pt and stop, which is awaited; those that
    did not (SIGINT sent to this process alone) keep running, and are named. Then how to resume the sweep."""
    from fmsweep.__main__ import resume_command

    resume = resume_command(True, hydra_cfg)
    if not job_ids:
        return f"fmsweep: interrupted before a job was submitted; resume the sweep with: {resume}"
    if slurm:
        ids = ",".join(job_ids)
        return (f"fmsweep: interrupted; the sweep's SLURM jobs {ids} keep running (watch: squeue -j {ids}; cancel: "
                f"scancel {' '.join(job_ids)}); once they ended, resume the sweep with: {resume}")
    running = _wait_for_children([int(i) for i in job_ids], LOCAL_STOP_S)
    if running:
        pids = " ".join(map(str, running))
        return (f"fmsweep: interrupted; the sweep's submitit_local jobs (pids {pids}) keep running (stop them: "
                f"kill -INT {pids}); once they ended, resume the sweep with: {resume}")
    return (f"fmsweep: interrupted; the sweep's jobs got the Ctrl-C too and stopped, each resumable from its last.pt; "
            f"resume the sweep with: {resume}")


def _wait_for_children(pids: list[int], timeout_s: float) -> list[int]:
    """Wait up to `timeout_s` for the child processes `pids` to end; return those still running."""
    deadline, running = time.monotonic() + timeout_s, list(pids)
    while running and time.monotonic() < deadline:
        time.sleep(0.1)
        running = [pid for pid in running if _running(pid)]
    return running


def _running(pid: int) -> bool:
    """Whether the child process `pid` still runs (reaping it if it ended)."""
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:  # already reaped (by submitit), or not our child
        return False


@contextmanager
def _quiet_controllers(sweep_dir: Path) -> Iterator[None]:
    """Start submitit_local's job controllers with their stderr in sweep_dir/.submitit/controllers.err instead of
    this terminal: a Ctrl-C reaches them too, and each would print a KeyboardInterrupt traceback after the sweep's
    line. (What the jobs write goes to their own logs.)"""
    from submitit.local import local

    start = local.start_controller

    def start_quietly(*args: Any, **kwargs: Any) -> Any:
        (sweep_dir / ".submitit").mkdir(parents=True, exist_ok=True)
        with open(sweep_dir / ".submitit" / "controllers.err", "ab") as err:
            terminal = os.dup(2)
            os.dup2(err.fileno(), 2)  # the controller inherits fd 2
            try:
                return start(*args, **kwargs)
            finally:
                os.dup2(terminal, 2)
                os.close(terminal)

    local.start_controller = start_quietly
    try:
        yield
    finally:
        local.start_controller = start


class _Lines:
    """A stream that says it is no terminal, so that the live status writes lines instead of redrawing."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False
