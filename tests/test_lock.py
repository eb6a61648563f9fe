"""One writer per run dir: a second process for a run dir that another trains in stops at once, exit 2, with one
line naming the holder, and changes nothing; the first finishes unharmed. A dead holder never blocks (the SIGKILL
test in test_crash.py restarts killed runs in their dir again and again)."""

import errno
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, Gate, fast_overrides

from fmsweep import train
from fmsweep.sweep import lock, manifest


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_second_holder_of_a_run_dir_is_refused_and_a_released_one_is_not(tmp_path: Path) -> None:
    with lock.hold([tmp_path / "a", tmp_path / "b"]):
        before = snapshot(tmp_path)
        with (
            pytest.raises(lock.RunDirBusy, match=rf"^{tmp_path / 'b'} is being trained by pid \d+ on .*, since "),
            lock.hold([tmp_path / "b"]),  # another open file of the same lock: as another process
        ):
            pass
        with pytest.raises(lock.RunDirBusy):
            lock.check_free(tmp_path / "a")
        assert snapshot(tmp_path) == before
    lock.check_free(tmp_path / "a")
    with lock.hold([tmp_path / "a"]):
        pass


def test_a_run_that_finds_its_dir_busy_records_nothing(make_cfg, tmp_path: Path) -> None:
    train.run(make_cfg("model=linear"), tmp_path)
    before = snapshot(tmp_path)
    with lock.hold([tmp_path]), pytest.raises(lock.RunDirBusy):
        train.run(make_cfg("model=linear", "epochs=2"), tmp_path)
    after = snapshot(tmp_path)
    after.pop(lock.LOCK), before.pop(lock.LOCK)  # the holder's name only
    assert after == before


@pytest.mark.parametrize("code", ["ENOSYS", "EOPNOTSUPP"])
def test_a_file_system_without_flock_is_said_once_and_the_run_and_the_record_go_on(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], code: str
) -> None:
    """Lustre mounted without `flock` (and some NFS and BeeGFS set-ups) raise ENOSYS or EOPNOTSUPP from flock: one
    line says what that leaves unguarded, once, and nothing fails; a lock held elsewhere is still refused."""

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    monkeypatch.setattr(lock, "no_flock_said", False, raising=False)
    train.run(make_cfg("model=linear", "epochs=1"), tmp_path / "run")
    with manifest.locked(tmp_path / "sweep"):
        lock.check_free(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"
    said = capsys.readouterr().err.splitlines()
    assert said == [
        f"fmsweep: the file system of {tmp_path / 'run'} gives no flock ({os.strerror(getattr(errno, code))}): nothing "
        "keeps a second process out "
        "of a run dir or a sweep's record there; launch, resume and cancel a sweep one command at a time"
    ]
    monkeypatch.undo()
    with lock.hold([tmp_path / "run"]), pytest.raises(lock.RunDirBusy):
        lock.check_free(tmp_path / "run")


@pytest.mark.slow
def test_two_processes_on_one_run_dir(data_root: Path, tmp_path: Path, held: Gate) -> None:
    command = [
        sys.executable,
        "-m",
        "fmsweep",
        *fast_overrides(data_root),
        "model=fc",
        "epochs=3",
        f"hydra.run.dir={tmp_path}",
    ]
    held.hold(1)  # the first run waits after epoch 1, its lock held, until the second process has ended
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    held.wait_held(1, alive=lambda: first.poll() is None)
    hydra_files = {name: (tmp_path / ".hydra" / name).read_bytes() for name in ("config.yaml", "overrides.yaml")}
    second = subprocess.run(
        [*command[:-2], "epochs=200", command[-1]], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 2 and second.stdout == ""
    assert second.stderr.splitlines() == [
        f"fmsweep: error: {tmp_path} is being trained by pid {first.pid} on "
        + second.stderr.split(f"pid {first.pid} on ", 1)[1].rstrip("\n")
    ]
    assert "nothing was changed" in second.stderr
    assert {name: (tmp_path / ".hydra" / name).read_bytes() for name in hydra_files} == hydra_files
    held.release()
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 3
    assert (tmp_path / "__main__.log").read_text().count("run dir ") == 1  # the second never started a run


@pytest.mark.slow
def test_a_second_launch_of_a_sweep_while_one_runs_is_refused_and_changes_nothing(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    """One command at a time launches a sweep: a rerun (or `fmsweep resume`) while the first launch runs is one line
    naming it, exit 2, with the record untouched; once the first ended, a rerun goes ahead."""
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "fmsweep",
        "-m",
        *fast_overrides(data_root),
        "model=linear",
        "seed=0,1",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    held.hold(1)  # the first launch's first job waits after epoch 1: the launch is still running
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    held.wait_held(1, alive=lambda: first.poll() is None)
    record = (sweep_dir / manifest.FILE).read_bytes()
    for again in (command, [sys.executable, "-m", "fmsweep.cli", "resume", str(sweep_dir)]):
        second = subprocess.run(again, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert second.stderr.splitlines() == [
            f"fmsweep: error: {sweep_dir} is being launched by pid {first.pid} on "
            + second.stderr.split(f"pid {first.pid} on ", 1)[1].rstrip("\n")
        ]
        assert "since " in second.stderr and "nothing was launched" in second.stderr
        assert (sweep_dir / manifest.FILE).read_bytes() == record
    held.release()
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "2 of 2 jobs completed before, skipped" in rerun.stdout
