"""One writer per run dir: a run holds an exclusive lock on its dir while it trains, so that a second process for
the same dir (a rerun of a sweep whose job still runs, `hydra.run.dir=X` in two terminals) stops at once instead of
training into it too.

The lock is `fcntl.flock` on a file in the run dir: the kernel drops it when its process ends, however it ends, so
a killed or requeued job never blocks the next attempt; on Linux NFS mounts it is a POSIX lock on the server. The
file holds who holds the lock (host, pid, SLURM job), for the message of the process it stops, and its time is
refreshed while the lock is held: a look from another node (a login node, where /proc/locks holds only its own
locks) knows a run there from a fresh heartbeat. The file is emptied when the run lets go. A file system that
gives no flock at all (Lustre mounted without `flock`, some NFS and BeeGFS set-ups) is said once, in one line, and
the run goes on without the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fmsweep.errors import UserError

LOCK = ".fmsweep.lock"
HEARTBEAT_S = 30.0  # how often a run refreshes its lock file's time
STALE_S = 4 * HEARTBEAT_S  # a lock file of another host not refreshed for this long names no live run
HOLDER = re.compile(r"pid (?P<pid>\d+) on (?P<host>[^,]+)(, SLURM job (?P<job>[^,]+))?,")
NO_FLOCK = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK}  # what flock raises where the file system has none
no_flock_said = False


class RunDirBusy(UserError):
    """Another process trains in this run dir; nothing was changed."""


def holder() -> str:
    """This process as the lock file names it: pid, host, SLURM job (array task) if any, since when."""
    job = os.environ.get("SLURM_JOB_ID")
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return (
        f"pid {os.getpid()} on {socket.gethostname()}"
        + (f", SLURM job {job}" if job else "")
        + f", since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )


class Held(Exception):
    """Another process holds the lock of a file: who, as its lock file names it."""


def held_by(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"


def busy(run_dir: Path, by: str) -> RunDirBusy:
    return RunDirBusy(f"{run_dir} is being trained by {by}; nothing was changed (wait for it to end, or stop it)")


def say_no_flock(folder: Path, code: int) -> None:
    """Say, once per process, that `folder`'s file system gives no flock, and what that leaves unguarded."""
    global no_flock_said
    if no_flock_said:
        return
    no_flock_said = True
    print(
        f"fmsweep: the file system of {folder} gives no flock ({os.strerror(code)}): nothing keeps a second "
        "process out of a run dir or a sweep's record there; launch, resume and cancel a sweep one command at a time",
        file=sys.stderr,
    )


def flock(fd: int, operation: int, path: Path) -> bool:
    """fcntl.flock of `path`'s open file `fd`; False, said once, where its file system gives no flock. A lock held
    elsewhere still raises BlockingIOError (with LOCK_NB)."""
    try:
        fcntl.flock(fd, operation)
    except OSError as exc:
        if exc.errno not in NO_FLOCK:
            raise
        say_no_flock(path.parent, exc.errno)
        return False
    return True


def take(path: Path) -> int:
    """Open the lock file `path` (its folder made if need be) and hold its flock, naming this process in it; the open
    file, whose closing drops the lock. Held, naming the holder, where another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder().encode(), 0)
    except BlockingIOError:
        by = held_by(fd)
        os.close(fd)
        raise Held(by) from None
    return fd


@contextlib.contextmanager
def hold(run_dirs: list[Path]) -> Iterator[None]:
    """Hold the lock of every run dir in `run_dirs` (created if need be) while the block runs; RunDirBusy, before
    anything is written, if another process holds one. The lock files' heartbeat is refreshed every HEARTBEAT_S
    meanwhile, and they are emptied at the end: another node, which cannot see this one's locks, reads them."""
    with contextlib.ExitStack() as stack:
        fds = []
        for run_dir in run_dirs:
            try:
                fd = take(run_dir / LOCK)
            except Held as exc:
                raise busy(run_dir, str(exc)) from None
            stack.callback(os.close, fd)  # closing the file drops its lock
            stack.callback(os.ftruncate, fd, 0)  # first: no one holds it now
            fds.append(fd)
        stop = threading.Event()
        beat = threading.Thread(target=heartbeat, args=(fds, stop), daemon=True)
        beat.start()
        stack.callback(beat.join)
        stack.callback(stop.set)
        yield


def heartbeat(fds: list[int], stop: threading.Event) -> None:
    """Touch the open lock files `fds` every HEARTBEAT_S until `stop` is set."""
    while not stop.wait(HEARTBEAT_S):
        for fd in fds:
            with contextlib.suppress(OSError):
                os.utime(fd)


def held_elsewhere(path: Path, ended: Callable[[str], bool]) -> bool:
    """Whether the lock file `path` names a holder on another host whose heartbeat is fresh (touched within
    STALE_S), and that is not a SLURM job `ended` says ended: this host's /proc/locks cannot see that one's lock."""
    try:
        text = path.read_text()
        age = time.time() - path.stat().st_mtime
    except OSError:
        return False
    named = HOLDER.match(text)
    if named is None or named["host"] == socket.gethostname() or age >= STALE_S:
        return False
    return not (named["job"] and ended(named["job"]))


def check_free(run_dir: Path) -> None:
    """RunDirBusy if another process holds `run_dir`'s lock now; reads only, so that a refused run changes nothing."""
    by = holder_of(run_dir / LOCK)
    if by is not None:
        raise busy(run_dir, by)


def holder_of(path: Path) -> str | None:
    """Who holds the lock of the file `path` now, as the file names them; None when no one does (or no file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, path)
    except BlockingIOError:
        return held_by(fd)
    finally:
        os.close(fd)
    return None
