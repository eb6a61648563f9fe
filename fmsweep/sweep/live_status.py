"""The live status of a running sweep, shown by the launching command while its jobs run: each job of the sweep's
record as fmsweep.sweep.status reads and names it (by the overrides it does not share with every job; pending,
running with its epoch and best valid figure so far, completed with its best epoch's valid figures, pruned, failed
with its error, cancelled, stopped), and the counts.

On a terminal the block of lines is redrawn in place, never taller than the terminal: the counts, the overrides every
job shares, then the jobs that need watching first (running, failed), and where they do not all fit, a line counting
those left out.
Elsewhere (a file, a pipe, a SLURM log) a line is written per change of a job's state, never one per epoch, so that
a log of a long sweep stays readable."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Collection
from typing import TYPE_CHECKING, TextIO

from fmsweep.sweep import manifest as records
from fmsweep.sweep import status as reading
from fmsweep.sweep.manifest import Manifest
from fmsweep.sweep.status import Stale, Status

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)


class LiveStatus:
    """Context manager: while inside, a daemon thread reads the sweep every `interval` seconds (fmsweep.sweep.status:
    its record, re-read from disk each time since the launching code records job ids as it submits, the job dirs,
    SLURM's squeue and sacct) and shows it on `stream`.

    `launched` are the jobs this process launches now: what an earlier launch of the sweep dir left of them (a
    failure, a stop) counts only once their new launch shows (status.Stale). The record's other jobs (finished
    earlier, or still alive from an earlier launch) are shown too; off a terminal those already over at the first
    poll are counted, not reported. A search's trials that no worker asked yet are counted as pending; those asked
    after this began are reported as any launched job."""

    def __init__(
        self, manifest: Manifest, launched: Collection[int], stream: TextIO = sys.stdout, interval: float = 2.0
    ) -> None:
        self.manifest, self.stream, self.interval = manifest, stream, interval
        self.stale = Stale(manifest, launched)
        self.recorded = {job.num for job in manifest.jobs}  # a search's trials asked later are this launch's
        self.statuses: dict[int, Status] = {}
        self._changes: reading.Changes | None = None  # off a terminal, from the first poll on
        self._screen = reading.Screen(stream)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fmsweep-live-status", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the thread, poll once more and show the final state."""
        self._stop.set()
        self._thread.join()
        self._safe_update()

    def update(self) -> None:
        """Read the sweep once and show it: what the thread does every `interval` seconds."""
        try:
            self.manifest = records.load(self.manifest.sweep_dir) or self.manifest
        except Exception:  # a record unreadable for a moment: the last good one stands
            log.debug("live status: cannot read the sweep record", exc_info=True)
        self.statuses = reading.read(self.manifest, self.stale)
        shared, jobs = reading.named(self.manifest, self.statuses)
        if self.stream.isatty():
            total = reading.counts(["pending"] * self.manifest.not_asked() + [job.status.state for job in jobs])
            self._screen.draw(reading.fit([total, *shared], jobs, [], *reading.terminal()))
            return
        if self._changes is None:
            self._changes = reading.Changes(
                {
                    job.num: self.statuses[job.num].state
                    for job in self.manifest.jobs
                    if job.num in self.recorded
                    and job.num not in self.stale
                    and self.statuses[job.num].state in reading.FINAL
                }
            )
        self._changes.write(self.stream, jobs, ["pending"] * self.manifest.not_asked())

    def _run(self) -> None:
        # the first poll after one interval: the launcher's own opening lines come before the first block
        while not self._stop.wait(self.interval):
            self._safe_update()

    def _safe_update(self) -> None:
        try:
            self.update()
        except Exception:  # showing the status must never stop the sweep (a closed stream, a vanished folder)
            log.debug("live status: update failed", exc_info=True)
