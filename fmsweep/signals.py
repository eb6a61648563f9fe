"""Stop requests: SIGINT, SIGTERM and SIGUSR2 become a flag that the training loop checks between steps,
so that it can save a fresh last.pt before it stops or before a cluster launcher requeues the job.

Inside a submitit job, submitit installed its handlers before ours: SIGUSR2 checkpoints and requeues the job (its
`scontrol requeue` then sends the job a SIGTERM), SIGTERM only logs ("bypass"). A SIGTERM without an earlier SIGUSR2
is thus a plain cancel (`scancel`): the run stops rather than train on until SLURM's KillWait kills it.

A launcher job listens from its first instruction (`listen`, once submitit installed its handlers): a signal before
the run's StopRequest exists (its imports, Hydra's set-up, loading the data) waits in `pending`, and the StopRequest
acts on it at once, instead of submitit's bypass swallowing it."""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from fmsweep.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
pending: list[int] = []  # stop signals that came while no StopRequest was there, in order
outer: dict[int, Any] = {}  # the handlers `listen` found (submitit's), which a StopRequest hands signals over to


def listen() -> None:
    """From now on, keep the stop signals that come while no StopRequest is there in `pending`: call as a launcher
    job's first instruction."""
    if not outer:
        for sig in SIGNALS:
            outer[sig] = signal.signal(sig, _keep)


def _keep(signum: int, frame: FrameType | None) -> None:
    pending.append(signum)


def cancel_pending() -> bool:
    """Whether a SIGTERM or SIGINT without a SIGUSR2 before it came while no StopRequest was there: a cancel."""
    return bool({signal.SIGTERM, signal.SIGINT} & set(pending)) and signal.SIGUSR2 not in pending


class StopRequest:
    """Context manager that records the stop signal received; `handle` (or `check`) acts on it once saved.

    A SIGTERM does not replace a SIGUSR2 not yet handled: the requeue it asks for would be lost."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.requeue_asked = False  # a SIGUSR2 came: a SIGTERM from now on is the requeue's own
        self.previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def __enter__(self) -> StopRequest:
        for sig in SIGNALS:
            previous = signal.signal(sig, self._record)
            self.previous[sig] = outer[sig] if previous is _keep else previous
        for signum in pending:  # those that came before: acted on at the run's first check
            self._record(signum, None)
        pending.clear()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, _keep if outer else handler)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGUSR2:
            self.requeue_asked = True
        if not (signum == signal.SIGTERM and self.signum == signal.SIGUSR2):
            self.signum = signum

    def handle(self) -> None:
        """Call after saving: raise Interrupted, unless the handler installed before ours takes the signal and
        returns (submitit's requeue on SIGUSR2, its bypass of a SIGTERM that follows a SIGUSR2). A SIGTERM without
        an earlier SIGUSR2 is a cancel: it raises Interrupted whatever handler was there."""
        signum, self.signum = self.signum, None
        assert signum is not None, "handle() is called once a signal came"
        previous = self.previous.get(signum)
        cancel = signum == signal.SIGTERM and not self.requeue_asked
        if callable(previous) and previous is not signal.default_int_handler and not cancel:
            previous(signum, None)
            return
        raise Interrupted(signum)

    def check(self) -> None:
        """`handle` the stop signal received, if any: call where everything the run did is saved."""
        if self.signum is not None:
            self.handle()
