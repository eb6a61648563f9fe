"""fmsweep.sweep.live_status on fake sweep dirs (a sweep.json and job dirs): one line per change of state off a
terminal, the block redrawn in place on one, the record re-read as the launching code records SLURM job ids, jobs of
an earlier launch, and nothing that stops the sweep."""

import contextlib
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for
from test_status import COMPLETED, completed, fake_slurm, history, metrics, set_states, start, sweep

from fmsweep.sweep import lock, status
from fmsweep.sweep import manifest as records
from fmsweep.sweep.live_status import LiveStatus
from fmsweep.sweep.manifest import Manifest

# a 33-job sweep by the letters of set_states: 5 running, 3 failed, 15 pending, 10 completed
SWEEP_33 = "ccrpfpcpprcppcfpcrpppccprpfpcpcrp"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def held() -> Iterator[contextlib.ExitStack]:
    """Run-dir locks held until the test ends: the running jobs'."""
    with contextlib.ExitStack() as stack:
        yield stack


def blocks(out: str, lines: int) -> list[list[str]]:
    """The blocks drawn on a terminal, each as its lines without the clear-line and clear-below codes."""
    return [block.replace("\x1b[2K", "").replace("\x1b[J", "").splitlines() for block in out.split(f"\x1b[{lines}F")]


def terminal_of(monkeypatch: pytest.MonkeyPatch, columns: int, lines: int) -> None:
    monkeypatch.setattr(status.shutil, "get_terminal_size", lambda: os.terminal_size((columns, lines)))


def launched(manifest: Manifest) -> list[int]:
    return [job.num for job in manifest.jobs]


def test_off_a_terminal_one_line_per_change_of_state(tmp_path: Path) -> None:
    manifest = sweep(tmp_path, 3)
    a, b, c = (tmp_path / job.name for job in manifest.jobs)
    out = io.StringIO()
    live = LiveStatus(manifest, launched(manifest), stream=out)

    def new_lines() -> list[str]:
        live.update()
        lines = out.getvalue().splitlines()
        out.seek(0)
        out.truncate()
        return lines

    assert new_lines() == []
    start(a)
    assert new_lines() == []  # Hydra wrote .hydra/: the run has not taken its lock yet
    with lock.hold([a]):
        assert new_lines() == ["fmsweep: lr=0 running (2 pending, 1 running, 0 completed, 0 failed)"]
        history(a, [0.2])
        assert new_lines() == []  # an epoch is no change of state
        history(a, [0.2, 0.15])
        assert new_lines() == []
        completed(a, best_epoch=2, valid_loss=0.15, valid_acc=0.85, test_acc=0.8812)
    start(b)
    with lock.hold([b]):
        assert new_lines() == [  # the counts after each change; the valid figures, not the test split's
            "fmsweep: lr=0 completed: valid loss 0.1500, valid acc 85.00 % (best epoch 2 of 3) "
            "(2 pending, 0 running, 1 completed, 0 failed)",
            "fmsweep: lr=1 running (1 pending, 1 running, 1 completed, 0 failed)",
        ]
        error = (
            "RuntimeError: CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported " + "x" * 120
        )
        metrics(b, status="failed", error=error)
    start(c)
    with lock.hold([c]):
        metrics(c, status="failed", error="ValueError: bad")
    assert new_lines() == [
        f"fmsweep: lr=1 failed: {' '.join(error.split())[: status.ERROR_CHARS]} "
        "(1 pending, 0 running, 1 completed, 1 failed)",
        "fmsweep: lr=2 failed: ValueError: bad (0 pending, 0 running, 1 completed, 2 failed)",
    ]
    assert new_lines() == []


def test_on_a_terminal_the_block_is_redrawn_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: contextlib.ExitStack
) -> None:
    terminal_of(monkeypatch, 50, 24)
    manifest = sweep(tmp_path, 2, epochs=10)
    manifest.jobs[0].overrides = ["epochs=10", "lr=0"]
    manifest.jobs[1].name, manifest.jobs[1].overrides = (
        "1_epochs=10,model=cnn,seed=12",
        ["model=cnn", "seed=12", "epochs=10"],
    )
    manifest.save()
    first, second = (tmp_path / job.name for job in manifest.jobs)
    out = Terminal()
    live = LiveStatus(manifest, launched(manifest), stream=out)
    live.update()
    assert out.getvalue() == (
        "\x1b[2K2 pending, 0 running, 0 completed, 0 failed\n"
        "\x1b[2Kevery job: epochs=10\n"
        "\x1b[2Klr=0               pending\n"
        "\x1b[2Kmodel=cnn,seed=12  pending\n"
    )
    start(first)
    history(first, [0.15, 0.1288])
    start(second)
    held.enter_context(lock.hold([first, second]))
    live.update()
    drawn = out.getvalue()
    live.update()  # nothing changed: nothing drawn
    assert out.getvalue() == drawn
    assert drawn.count("\x1b[4F") == 1
    assert blocks(drawn, 4)[-1] == [
        "0 pending, 2 running, 0 completed, 0 failed",
        "every job: epochs=10",
        "lr=0               running: epoch 2 of 10, best v",  # 49 characters: shorter than the terminal
        "model=cnn,seed=12  running: starting",
    ]
    completed(second, epochs=10)
    live.update()
    assert out.getvalue().count("\x1b[4F") == 2
    assert blocks(out.getvalue(), 4)[-1] == [
        "0 pending, 1 running, 1 completed, 0 failed",
        "every job: epochs=10",
        "lr=0               running: epoch 2 of 10, best v",
        "model=cnn,seed=12  completed: valid loss 0.3312, ",
    ]


def test_a_sweep_taller_than_the_terminal_shows_running_and_failed_jobs_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: contextlib.ExitStack
) -> None:
    """Measured before: a 33-job block on a 24-row terminal was 34 lines, and each redraw scrolled."""
    terminal_of(monkeypatch, 80, 24)
    manifest = sweep(tmp_path, 33)
    out = Terminal()
    live = LiveStatus(manifest, launched(manifest), stream=out)
    live.update()
    set_states(manifest, SWEEP_33, held)
    live.update()
    first, block = blocks(out.getvalue(), 23)  # the second drawn over the first: 23 lines up
    assert first[0] == "33 pending, 0 running, 0 completed, 0 failed" and first[-1] == "… 12 more (12 pending)"
    assert len(first) == len(block) == 23  # the terminal's 24 rows less the cursor's
    assert block[0] == "15 pending, 5 running, 10 completed, 3 failed"
    assert block[1] == "lr=2   running: epoch 1 of 3, best valid loss 0.4000 (epoch 1)"  # in a state, the sweep's order
    shown = [line.split()[1].rstrip(":") for line in block[1:-1]]
    assert shown == ["running"] * 5 + ["failed"] * 3 + ["pending"] * 13
    assert block[-1] == "… 12 more (2 pending, 10 completed)"
    more = re.fullmatch(r"… (\d+) more \((.*)\)", block[-1])
    assert more is not None
    left = {state: int(n) for n, state in (part.split() for part in more[2].split(", "))}
    assert sum(left.values()) == int(more[1]) == 33 - len(shown)
    assert {state: shown.count(state) + left.get(state, 0) for state in set(shown) | set(left)} == {
        "running": 5,
        "failed": 3,
        "pending": 15,
        "completed": 10,
    }


@pytest.mark.parametrize("n_jobs", [3, 22])  # 22 jobs and the counts: the 24-row terminal's 23 lines
def test_a_sweep_that_fits_is_drawn_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: contextlib.ExitStack, n_jobs: int
) -> None:
    terminal_of(monkeypatch, 80, 24)
    manifest = sweep(tmp_path, n_jobs)
    letters = ("cpr" * n_jobs)[:n_jobs]
    out = Terminal()
    live = LiveStatus(manifest, launched(manifest), stream=out)
    set_states(manifest, letters, held)
    live.update()
    block = blocks(out.getvalue(), n_jobs + 1)[-1]
    assert block[0] == status.counts("pending" if c == "p" else "running" if c == "r" else "completed" for c in letters)
    assert sorted(line.split()[0] for line in block[1:]) == sorted(f"lr={job.num}" for job in manifest.jobs)  # once
    assert [line.split()[1].rstrip(":") for line in block[1:]] == (
        ["running"] * letters.count("r") + ["pending"] * letters.count("p") + ["completed"] * letters.count("c")
    )
    assert not any("more" in line for line in block)


def test_a_resize_between_redraws_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: contextlib.ExitStack
) -> None:
    manifest = sweep(tmp_path, 33)
    out = Terminal()
    live = LiveStatus(manifest, launched(manifest), stream=out)
    set_states(manifest, SWEEP_33, held)
    drawn = []
    for columns, lines in [(80, 24), (80, 10), (80, 50), (80, 50), (30, 50), (80, 3), (80, 2)]:
        terminal_of(monkeypatch, columns, lines)
        live.update()  # no job changed: a new size alone redraws
        drawn.append(out.getvalue())
        out.seek(0)
        out.truncate()
    ups = [(re.match(r"\x1b\[(\d+)F", text) or [None, None])[1] for text in drawn]
    assert ups == [None, "23", "9", None, "34", "34", "2"]  # the previous block's height; unchanged: nothing drawn
    shown = [re.sub(r"\x1b\[(\d+F|2K|J)", "", text).splitlines() for text in drawn]
    assert [len(block) for block in shown] == [23, 9, 34, 0, 34, 2, 1]
    assert shown[1][-1] == "… 26 more (1 failed, 15 pending, 10 completed)"
    assert shown[1][1:-1] == shown[0][1:8]  # the same first jobs: 5 running, 2 failed
    assert not any("more" in line for line in shown[2])  # 33 jobs and the counts fit 49 rows
    assert max(len(line) for line in shown[4]) == 29 and shown[4][1] == "lr=2   running: epoch 1 of 3,"
    assert shown[5] == [
        "15 pending, 5 running, 10 completed, 3 failed",
        "… 33 more (5 running, 3 failed, 15 pending, 10 completed)",
    ]
    assert shown[6] == ["15 pending, 5 running, 10 completed, 3 failed"]
    # a smaller block clears the rows the taller one left below it; a taller one overwrites them
    assert [text.endswith("\x1b[J") for text in drawn] == [False, True, False, False, False, True, True]


def test_the_record_is_read_again_as_slurm_jobs_are_submitted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launching code records each job's SLURM job id as it submits it: each poll reads sweep.json again (and
    keeps the last good record when it cannot), and SLURM's view follows. A job not submitted yet is pending while
    the launch (which holds the sweep's launch lock) submits it."""
    manifest = sweep(tmp_path / "sweep", 3, launcher="slurm", epochs=5)
    log = fake_slurm(tmp_path / "bin", monkeypatch, squeue="40_0|PENDING|Priority\n40_1|RUNNING|None\n")
    out = Terminal()
    live = LiveStatus(manifest, launched(manifest), stream=out)
    with records.launching(manifest.sweep_dir):
        live.update()
    assert blocks(out.getvalue(), 4)[-1][1:] == [f"lr={n}  pending (being submitted)" for n in range(3)]
    assert log.read_text() == ""  # no job id yet: SLURM not asked
    record = records.load(manifest.sweep_dir)  # what the launching code does, apart from the live status
    assert record is not None
    record.jobs[0].launcher_job, record.jobs[1].launcher_job = "40_0", "40_1"
    record.jobs[2].launcher_job = record.jobs[1].launcher_job  # a pack: one SLURM job trains both
    record.save()
    live.update()
    assert blocks(out.getvalue(), 4)[-1] == [
        "1 pending, 2 running, 0 completed, 0 failed",
        "lr=1  running: starting",
        "lr=2  running: starting",
        "lr=0  pending (Priority)",
    ]
    assert log.read_text().splitlines() == ["squeue -h -r -o %i|%T|%r -j 40_0,40_1"]
    manifest.path.write_text("{not json")  # a record that cannot be read: the last good one stands
    fake_slurm(tmp_path / "bin", monkeypatch, squeue="40_0|RUNNING|None\n40_1|RUNNING|None\n")
    live.update()
    assert blocks(out.getvalue(), 4)[-1][0] == "0 pending, 3 running, 0 completed, 0 failed"


def test_jobs_of_an_earlier_launch(tmp_path: Path, held: contextlib.ExitStack) -> None:
    """A rerun launches the failed and stopped jobs again: their earlier results are pending until their new
    launch shows; the others are shown as they are, and off a terminal those already over are not reported."""
    manifest = sweep(tmp_path, 5)
    set_states(manifest, "cfrsp", held)  # 2: still running from an earlier launch, not launched again
    dirs = [tmp_path / job.name for job in manifest.jobs]
    out = io.StringIO()
    live = LiveStatus(manifest, [1, 3, 4], stream=out)
    live.update()
    assert out.getvalue() == "fmsweep: lr=2 running (3 pending, 1 running, 1 completed, 0 failed)\n"
    assert [s.state for s in live.statuses.values()] == ["completed", "pending", "running", "pending", "pending"]
    start(dirs[1])  # Hydra rewrites .hydra/; the earlier failure still is no news
    live.update()
    with lock.hold([dirs[1]]):
        live.update()
        completed(dirs[1])
    live.update()
    assert out.getvalue().splitlines()[1:] == [
        "fmsweep: lr=1 running (2 pending, 2 running, 1 completed, 0 failed)",
        f"fmsweep: lr=1 {COMPLETED} (2 pending, 1 running, 2 completed, 0 failed)",
    ]


def test_a_search_counts_the_trials_not_asked_yet_as_pending(tmp_path: Path) -> None:
    manifest = sweep(tmp_path, 1)
    manifest.kind, manifest.trials = "search", 4
    manifest.save()
    out = io.StringIO()
    live = LiveStatus(manifest, [0], stream=out)
    start(tmp_path / manifest.jobs[0].name)
    with lock.hold([tmp_path / manifest.jobs[0].name]):
        live.update()
    assert out.getvalue() == "fmsweep: lr=0 running (3 pending, 1 running, 0 completed, 0 failed)\n"


def test_a_trial_renamed_by_a_new_one_is_not_reported_again(tmp_path: Path) -> None:
    """Off a terminal, jobs are told apart by number: a search's new trial changes which overrides every trial
    shares, and so the names of the others, which are no news."""
    manifest = sweep(tmp_path, 1)
    manifest.kind, manifest.trials = "search", 2
    manifest.jobs[0].overrides = ["model=fc", "lr=0.1"]
    manifest.save()
    run_dir = tmp_path / manifest.jobs[0].name
    out = io.StringIO()
    live = LiveStatus(manifest, [0], stream=out)
    start(run_dir)
    with lock.hold([run_dir]):
        live.update()
        record = records.load(tmp_path)  # a worker asks the second trial
        assert record is not None
        record.jobs.append(
            records.JobRecord(num=1, name="1_lr=0.2,model=fc", overrides=["model=fc", "lr=0.2"], epochs=3)
        )
        record.save()
        live.update()
    completed(run_dir)
    live.update()
    assert out.getvalue().splitlines() == [
        "fmsweep: lr=0.1,model=fc running (1 pending, 1 running, 0 completed, 0 failed)",  # alone, all its overrides
        f"fmsweep: lr=0.1 {COMPLETED} (1 pending, 0 running, 1 completed, 0 failed)",
    ]


def test_the_thread_polls_and_exit_shows_the_final_state(tmp_path: Path) -> None:
    manifest = sweep(tmp_path, 1)
    job_dir = tmp_path / manifest.jobs[0].name
    out = io.StringIO()
    with LiveStatus(manifest, [0], stream=out, interval=0.01) as live:
        start(job_dir)
        with lock.hold([job_dir]):
            wait_for("the thread to show the job running", lambda: "running" in out.getvalue(), every=0.01)
            history(job_dir, [0.4])
            completed(job_dir)
    assert not live._thread.is_alive()
    assert out.getvalue().splitlines() == [
        "fmsweep: lr=0 running (0 pending, 1 running, 0 completed, 0 failed)",
        f"fmsweep: lr=0 {COMPLETED} (0 pending, 0 running, 1 completed, 0 failed)",
    ]


class Polled(LiveStatus):
    """A live status that counts its thread's polls, so that a test waits for one after a change."""

    polls = 0

    def _safe_update(self) -> None:
        super()._safe_update()
        self.polls += 1

    def wait_for_poll(self) -> None:
        """Wait until the thread has polled twice more from now: once surely after what the test just did."""
        seen = self.polls
        wait_for("two more polls", lambda: self.polls >= seen + 2, every=0.01)


def test_a_broken_stream_does_not_stop_the_sweep(tmp_path: Path) -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError

    manifest = sweep(tmp_path, 1)
    with Polled(manifest, [0], stream=Broken(), interval=0.01) as live:
        start(tmp_path / manifest.jobs[0].name)
        with lock.hold([tmp_path / manifest.jobs[0].name]):  # a change of state to write
            live.wait_for_poll()
        assert live._thread.is_alive()  # the thread went on polling after the failed write
    assert not live._thread.is_alive()


def test_a_vanished_sweep_dir_does_not_stop_the_sweep(tmp_path: Path) -> None:
    manifest = sweep(tmp_path / "sweep", 1)
    out = Terminal()
    with Polled(manifest, [0], stream=out, interval=0.01) as live:
        for path in sorted(manifest.sweep_dir.rglob("*"), reverse=True):
            path.unlink()
        manifest.sweep_dir.rmdir()
        live.wait_for_poll()
        assert live._thread.is_alive()
    assert not live._thread.is_alive()
    assert blocks(out.getvalue(), 2)[-1] == ["1 pending, 0 running, 0 completed, 0 failed", "lr=0  pending"]
