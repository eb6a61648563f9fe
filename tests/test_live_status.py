"""fmsweep.sweep.live_status on fake job dirs: one line per change of state off a terminal, the block redrawn in place on
one, SLURM's view from a faked squeue, earlier launches of the sweep dir, and nothing that stops the sweep."""
import io
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from fmsweep.sweep import live_status
from fmsweep.files import atomic_write
from fmsweep.sweep.live_status import Job, LiveStatus

HEADER = "epoch,train_loss,train_acc,valid_loss,valid_acc,lr,epoch_seconds\n"
# a 33-job sweep by the letters of set_states: 5 running, 3 failed, 15 pending, 10 completed
SWEEP_33 = "ccrpfpcpprcppcfpcrpppccprpfpcpcrp"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def start(job_dir: Path) -> None:
    """What Hydra writes as a job starts."""
    (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (job_dir / ".hydra" / "config.yaml").write_text("epochs: 3\n")


def history(job_dir: Path, valid_accs: list[float]) -> None:
    rows = "".join(f"{epoch},0.5,0.8,0.4,{acc},0.01,1.5\n" for epoch, acc in enumerate(valid_accs, 1))
    atomic_write(job_dir / "history.csv", HEADER + rows)


def metrics(job_dir: Path, **values: object) -> None:
    atomic_write(job_dir / "metrics.json", json.dumps(values))


def rewrite_later(path: Path, text: str) -> None:
    """Rewrite a file with an mtime a second later than it had, whatever the file system's clock resolution."""
    later = path.stat().st_mtime_ns + 10**9
    path.write_text(text)
    os.utime(path, ns=(later, later))


def blocks(out: str, lines: int) -> list[list[str]]:
    """The blocks drawn on a terminal, each as its lines without the clear-line and clear-below codes."""
    return [block.replace("\x1b[2K", "").replace("\x1b[J", "").splitlines() for block in out.split(f"\x1b[{lines}F")]


def set_states(sweep_dir: Path, jobs: list[Job], letters: str) -> None:
    """Make each job's dir show the state its letter names: p pending, r running, c completed, f failed."""
    for job, letter in zip(jobs, letters, strict=True):
        if letter != "p":
            start(sweep_dir / job.name)
        if letter == "r":
            history(sweep_dir / job.name, [0.8])
        elif letter == "c":
            metrics(sweep_dir / job.name, status="completed", test_acc=0.9, epochs_run=job.epochs)
        elif letter == "f":
            metrics(sweep_dir / job.name, status="failed", error="ValueError: bad")


def terminal_of(monkeypatch: pytest.MonkeyPatch, columns: int, lines: int) -> None:
    monkeypatch.setattr(live_status.shutil, "get_terminal_size", lambda: os.terminal_size((columns, lines)))


def test_off_a_terminal_one_line_per_change_of_state(tmp_path: Path) -> None:
    a, b, c = "0_model=fc,seed=0", "1_model=fc,seed=1", "2_model=cnn,seed=0"
    out = io.StringIO()
    status = LiveStatus(tmp_path, [Job(a, 3), Job(b, 3), Job(c, 3)], stream=out)

    def new_lines() -> list[str]:
        status.update()
        lines = out.getvalue().splitlines()
        out.seek(0)
        out.truncate()
        return lines

    assert new_lines() == []
    start(tmp_path / a)
    assert new_lines() == [f"fmsweep: {a} running (2 pending, 1 running, 0 completed, 0 failed)"]
    history(tmp_path / a, [0.81])
    assert new_lines() == []  # an epoch is no change of state
    history(tmp_path / a, [0.81, 0.85])
    assert new_lines() == []
    metrics(tmp_path / a, status="completed", best_epoch=2, valid_acc=0.85, test_acc=0.8812, epochs_run=3)
    start(tmp_path / b)
    assert new_lines() == [  # the counts after each change
        f"fmsweep: {a} completed: test acc 88.12 % (2 pending, 0 running, 1 completed, 0 failed)",
        f"fmsweep: {b} running (1 pending, 1 running, 1 completed, 0 failed)",
    ]
    error = "RuntimeError: CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported " + "x" * 80
    metrics(tmp_path / b, status="failed", error=error)
    start(tmp_path / c)
    metrics(tmp_path / c, status="failed", error="ValueError: bad")
    assert new_lines() == [
        f"fmsweep: {b} failed: {' '.join(error.split())[:80]} (1 pending, 0 running, 1 completed, 1 failed)",
        f"fmsweep: {c} failed: ValueError: bad (0 pending, 0 running, 1 completed, 2 failed)",
    ]
    assert new_lines() == []


def test_on_a_terminal_the_block_is_redrawn_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_status.shutil, "get_terminal_size", lambda: os.terminal_size((50, 24)))
    out = Terminal()
    status = LiveStatus(tmp_path, [Job("0_model=fc", 10), Job("1_model=cnn,seed=12", 10)], stream=out)
    status.update()
    assert out.getvalue() == ("\x1b[2K2 pending, 0 running, 0 completed, 0 failed\n"
                              "\x1b[2K0_model=fc           pending\n"
                              "\x1b[2K1_model=cnn,seed=12  pending\n")
    start(tmp_path / "0_model=fc")
    history(tmp_path / "0_model=fc", [0.85, 0.8712])
    start(tmp_path / "1_model=cnn,seed=12")
    status.update()
    drawn = out.getvalue()
    status.update()  # nothing changed: nothing drawn
    assert out.getvalue() == drawn
    assert drawn.count("\x1b[3F") == 1
    assert blocks(drawn, 3)[-1] == [
        "0 pending, 2 running, 0 completed, 0 failed",
        "0_model=fc           running: epoch 2 of 10, best",  # 49 characters: shorter than the terminal
        "1_model=cnn,seed=12  running: starting",
    ]
    metrics(tmp_path / "1_model=cnn,seed=12", status="completed", test_acc=0.9, epochs_run=10)
    status.update()
    assert out.getvalue().count("\x1b[3F") == 2
    assert blocks(out.getvalue(), 3)[-1] == ["0 pending, 1 running, 1 completed, 0 failed",
                                             "0_model=fc           running: epoch 2 of 10, best",
                                             "1_model=cnn,seed=12  completed: test acc 90.00 %"]


def test_a_sweep_taller_than_the_terminal_shows_running_and_failed_jobs_first(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Measured before: a 33-job block on a 24-row terminal was 34 lines, and each redraw scrolled."""
    terminal_of(monkeypatch, 80, 24)
    jobs = [Job(f"{i}_lr={i}", 3) for i in range(33)]
    out = Terminal()
    status = LiveStatus(tmp_path, jobs, stream=out)
    status.update()
    set_states(tmp_path, jobs, SWEEP_33)
    status.update()
    first, block = blocks(out.getvalue(), 23)  # the second drawn over the first: 23 lines up
    assert first[0] == "33 pending, 0 running, 0 completed, 0 failed" and first[-1] == "… 12 more (12 pending)"
    assert len(first) == len(block) == 23  # the terminal's 24 rows less the cursor's
    assert block[0] == "15 pending, 5 running, 10 completed, 3 failed"
    assert block[1] == "2_lr=2    running: epoch 1 of 3, best valid acc 80.00 %"  # within a state, the sweep's order
    shown = [line.split()[1].rstrip(":") for line in block[1:-1]]
    assert shown == ["running"] * 5 + ["failed"] * 3 + ["pending"] * 13
    assert block[-1] == "… 12 more (2 pending, 10 completed)"
    more = re.fullmatch(r"… (\d+) more \((.*)\)", block[-1])
    left = {state: int(n) for n, state in (part.split() for part in more[2].split(", "))}
    assert sum(left.values()) == int(more[1]) == len(jobs) - len(shown)
    assert {state: shown.count(state) + left.get(state, 0) for state in set(shown) | set(left)} == {
        "running": 5, "failed": 3, "pending": 15, "completed": 10}


@pytest.mark.parametrize("n_jobs", [3, 22])  # 22 jobs and the counts: the 24-row terminal's 23 lines
def test_a_sweep_that_fits_is_drawn_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n_jobs: int) -> None:
    terminal_of(monkeypatch, 80, 24)
    jobs = [Job(f"{i}_seed={i}", 3) for i in range(n_jobs)]
    letters = ("cpr" * n_jobs)[:n_jobs]
    out = Terminal()
    status = LiveStatus(tmp_path, jobs, stream=out)
    set_states(tmp_path, jobs, letters)
    status.update()
    block = blocks(out.getvalue(), n_jobs + 1)[-1]
    assert block[0] == live_status.counts("pending" if c == "p" else "running" if c == "r" else "completed"
                                          for c in letters)
    assert sorted(line.split()[0] for line in block[1:]) == sorted(job.name for job in jobs)  # each job once
    assert [line.split()[1].rstrip(":") for line in block[1:]] == (
        ["running"] * letters.count("r") + ["pending"] * letters.count("p") + ["completed"] * letters.count("c"))
    assert not any("more" in line for line in block)


def test_a_resize_between_redraws_is_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = [Job(f"{i}_lr={i}", 3) for i in range(33)]
    out = Terminal()
    status = LiveStatus(tmp_path, jobs, stream=out)
    set_states(tmp_path, jobs, SWEEP_33)
    drawn = []
    for columns, lines in [(80, 24), (80, 10), (80, 50), (80, 50), (30, 50), (80, 3), (80, 2)]:
        terminal_of(monkeypatch, columns, lines)
        status.update()  # no job changed: a new size alone redraws
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
    assert max(len(line) for line in shown[4]) == 29 and shown[4][1] == "2_lr=2    running: epoch 1 of"
    assert shown[5] == ["15 pending, 5 running, 10 completed, 3 failed",
                        "… 33 more (5 running, 3 failed, 15 pending, 10 completed)"]
    assert shown[6] == ["15 pending, 5 running, 10 completed, 3 failed"]
    # a smaller block clears the rows the taller one left below it; a taller one overwrites them
    assert [text.endswith("\x1b[J") for text in drawn] == [False, True, False, False, False, True, True]


def test_slurm_state_and_reason_from_one_squeue_per_poll(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = [Job(f"{i}_seed={i}", 5) for i in range(3)]
    for folder in ("12_0", "12_1", "12_2", "40_0", "40_1", "40_2", "40_3"):  # 12: an earlier launch of the sweep dir
        (tmp_path / ".submitit" / folder).mkdir(parents=True)
    views = [
        {"40_0": ("PENDING", "PartitionConfig"), "40_1": ("RUNNING", "None"), "40_2": ("CONFIGURING", "None")},
        {"40_0": ("PENDING", "Priority")},  # 40_1 left the queue: requeued, or finished without a result yet
        {"40_0": ("PENDING", "Priority"), "40_1": ("PENDING", "BeginTime")},  # requeued
    ]
    calls = []

    def fake_squeue(job_ids: list[str]) -> dict[str, tuple[str, str]]:
        calls.append(job_ids)
        return views[len(calls) - 1]

    monkeypatch.setattr(live_status, "squeue", fake_squeue)
    out = Terminal()
    status = LiveStatus(tmp_path, jobs, stream=out, slurm=True)
    status.update()
    assert blocks(out.getvalue(), 4)[-1] == ["2 pending, 1 running, 0 completed, 0 failed",
                                             "1_seed=1  running: starting", "0_seed=0  pending (PartitionConfig)",
                                             "2_seed=2  pending (CONFIGURING)"]
    start(tmp_path / jobs[1].name)
    status.update()
    assert blocks(out.getvalue(), 4)[-1][1:] == ["1_seed=1  running: starting", "0_seed=0  pending (Priority)",
                                                 "2_seed=2  pending"]
    status.update()
    assert blocks(out.getvalue(), 4)[-1][1:] == ["0_seed=0  pending (Priority)", "1_seed=1  pending (BeginTime)",
                                                 "2_seed=2  pending"]
    assert calls == [["40_0", "40_1", "40_2"]] * 3


def test_a_lone_slurm_job_is_the_first_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".submitit" / "7").mkdir(parents=True)
    monkeypatch.setattr(live_status, "squeue", lambda job_ids: {"7": ("PENDING", "Resources")} if job_ids == ["7"] else {})
    out = Terminal()
    LiveStatus(tmp_path, [Job("0_", 5)], stream=out, slurm=True).update()
    assert blocks(out.getvalue(), 2)[-1][1] == "0_  pending (Resources)"


def test_members_of_a_pack_show_the_slurm_state_of_the_task_that_runs_them(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for task in (0, 1):
        (tmp_path / ".submitit" / f"50_{task}").mkdir(parents=True)
    monkeypatch.setattr(live_status, "squeue", lambda job_ids: {"50_0": ("PENDING", "Priority"), "50_1": ("PENDING", "Resources")})
    out = Terminal()
    jobs = [Job("0_seed=0", 5, task=0), Job("1_seed=1", 5, task=0), Job("2_seed=2", 5, task=1)]
    LiveStatus(tmp_path, jobs, stream=out, slurm=True).update()
    assert blocks(out.getvalue(), 4)[-1][1:] == ["0_seed=0  pending (Priority)", "1_seed=1  pending (Priority)",
                                                 "2_seed=2  pending (Resources)"]


def test_squeue_command_and_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    commands = []

    def fake_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        commands.append(command)
        stdout = "40_0|PENDING|Priority\n40_1|RUNNING|None\nslurm_load_jobs error\n"
        return subprocess.CompletedProcess(command, 0, stdout=stdout, stderr="")

    monkeypatch.setattr(live_status.subprocess, "run", fake_run)
    assert live_status.squeue(["40_0", "40_1"]) == {"40_0": ("PENDING", "Priority"), "40_1": ("RUNNING", "None")}
    assert commands == [["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", "40_0,40_1"]]

    def failing_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        raise subprocess.CalledProcessError(1, command, stderr="slurm_load_jobs error: Invalid job id specified")

    monkeypatch.setattr(live_status.subprocess, "run", failing_run)
    assert live_status.squeue(["40_0"]) == {}


def test_what_an_earlier_launch_left_in_the_sweep_dir(tmp_path: Path) -> None:
    """A failed job launched again is pending until Hydra rewrites its .hydra/, then running until its new
    metrics.json; a completed one is completed at once, unless it is to run more epochs than it did."""
    failed, done, continued = Job("0_a", 3), Job("1_b", 3), Job("2_c", 5)
    for job in (failed, done, continued):
        start(tmp_path / job.name)
        history(tmp_path / job.name, [0.8])
    metrics(tmp_path / failed.name, status="failed", error="OSError: disk full")
    for job in (done, continued):
        metrics(tmp_path / job.name, status="completed", test_acc=0.8, epochs_run=3)
    out = io.StringIO()
    status = LiveStatus(tmp_path, [failed, done, continued], stream=out)
    status.update()
    assert out.getvalue() == "fmsweep: 1_b completed: test acc 80.00 % (2 pending, 0 running, 1 completed, 0 failed)\n"
    rewrite_later(tmp_path / failed.name / ".hydra" / "config.yaml", "epochs: 3\n")
    status.update()
    assert out.getvalue().splitlines()[1:] == ["fmsweep: 0_a running (1 pending, 1 running, 1 completed, 0 failed)"]
    rewrite_later(tmp_path / failed.name / "metrics.json", json.dumps({"status": "completed", "test_acc": 0.85}))
    status.update()
    assert out.getvalue().splitlines()[2:] == [
        "fmsweep: 0_a completed: test acc 85.00 % (1 pending, 0 running, 2 completed, 0 failed)"]


def test_a_garbled_history_is_read_again_at_the_next_poll(tmp_path: Path) -> None:
    job = Job("0_model=fc", 3)
    out = Terminal()
    status = LiveStatus(tmp_path, [job], stream=out)
    start(tmp_path / job.name)
    (tmp_path / job.name / "history.csv").write_text(HEADER + "1,0.5,zz\x00,\n2,")
    status.update()
    assert blocks(out.getvalue(), 2)[-1][1] == "0_model=fc  pending"  # its last known status
    history(tmp_path / job.name, [0.8, 0.9])
    status.update()
    assert blocks(out.getvalue(), 2)[-1][1] == "0_model=fc  running: epoch 2 of 3, best valid acc 90.00 %"


def test_the_thread_polls_and_exit_shows_the_final_state(tmp_path: Path) -> None:
    job = Job("0_model=fc", 3)
    out = io.StringIO()
    with LiveStatus(tmp_path, [job], stream=out, interval=0.01) as status:
        start(tmp_path / job.name)
        deadline = time.monotonic() + 0.5
        while "running" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        history(tmp_path / job.name, [0.8])
        metrics(tmp_path / job.name, status="completed", test_acc=0.875, epochs_run=3)
    assert not status._thread.is_alive()
    assert out.getvalue().splitlines() == [
        "fmsweep: 0_model=fc running (0 pending, 1 running, 0 completed, 0 failed)",
        "fmsweep: 0_model=fc completed: test acc 87.50 % (0 pending, 0 running, 1 completed, 0 failed)",
    ]


def test_a_broken_stream_does_not_stop_the_sweep(tmp_path: Path) -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError

    with LiveStatus(tmp_path, [Job("0_", 1)], stream=Broken(), interval=0.01) as status:
        start(tmp_path / "0_")  # a change of state to write
        time.sleep(0.03)
    assert not status._thread.is_alive()
