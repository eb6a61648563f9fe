"""Stop requests: SIGINT, SIGTERM and SIGUSR2 become a flag that the training loop checks between steps,
so that it can save a fresh last.pt before it stops or before a cluster launcher requeues the job."""
from __future__ import annotations

import signal
from types import FrameType, TracebackType

from fmsweep.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class StopRequest:
    """Context manager that records the last stop signal received; `handle` acts on it once saved."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        for sig in SIGNALS:
            self.previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def handle(self) -> None:
        """Call after saving: hand the signal to the handler installed before ours (submitit's requeue on
        SIGUSR2, its bypass of SIGTERM) and go on if it returns; without one, raise Interrupted."""
        signum, self.signum = self.signum, None
        previous = self.previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, None)
            return
        raise Interrupted(signum)
