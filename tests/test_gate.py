"""The tests' gate (fmsweep.gate): a run held at an epoch's end has committed that epoch and goes no further until
released; a stop signal while it is held stops it as one mid-epoch would; without the variable nothing waits."""

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

from conftest import ROOT, Gate, fast_overrides

from fmsweep import checkpoint, gate


def test_a_held_run_waits_after_its_epoch_until_released(held: Gate, data_root: Path, tmp_path: Path) -> None:
    held.hold(2)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fmsweep",
            *fast_overrides(data_root),
            "model=linear",
            "epochs=3",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert held.wait_held(2, alive=lambda: proc.poll() is None) == [tmp_path.name]
    # held: epoch 2 is committed, epoch 3 not begun, nothing finished
    assert (
        checkpoint.load(tmp_path / checkpoint.LAST)["epoch"] == 2
        and checkpoint.load(tmp_path / checkpoint.LAST)["partial"] is None
    )
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 3 and not (tmp_path / "metrics.json").exists()
    assert held.held(1) == [] and proc.poll() is None
    held.hold(3)  # one epoch more
    held.wait_held(3, alive=lambda: proc.poll() is None)
    assert checkpoint.load(tmp_path / checkpoint.LAST)["epoch"] == 3 and not (tmp_path / "metrics.json").exists()
    held.release()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs_run"] == 3


def test_a_stop_signal_while_held_stops_the_run_resumable(held: Gate, data_root: Path, tmp_path: Path) -> None:
    held.hold(1)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fmsweep",
            *fast_overrides(data_root),
            "model=linear",
            "epochs=3",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    held.wait_held(1, alive=lambda: proc.poll() is None)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert f"fmsweep: stopped by SIGTERM, {tmp_path / checkpoint.LAST} saved" in err
    assert not (tmp_path / "metrics.json").exists()


def test_without_the_variable_nothing_waits_and_a_run_let_go_goes_on(monkeypatch, tmp_path: Path) -> None:
    held = Gate(tmp_path)
    held.hold(0)
    monkeypatch.delenv(gate.ENV, raising=False)
    gate.wait([tmp_path / "run"], 1, lambda: False)  # returns at once
    assert held.held(1) == []
    monkeypatch.setenv(gate.ENV, str(tmp_path))
    gate.wait([tmp_path / "run"], 1, lambda: True)  # held, but stopped
    assert held.held(1) == ["run"]
    waiting = threading.Thread(target=gate.wait, args=([tmp_path / "other"], 2, lambda: False))
    waiting.start()
    held.wait_held(2)
    assert waiting.is_alive()
    held.let_go("other", 2)  # this one only: the gate still holds at epoch 0 and on
    waiting.join(timeout=600)
    assert not waiting.is_alive() and (tmp_path / "hold").exists()
