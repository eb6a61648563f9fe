"""What a user meets beyond the config: the Python API of `import fmsweep` (cheap to import, listed by dir()) and
the log lines of a stopped and resumed run, which count epochs the same way."""

import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from test_crash import SignalledSteps
from torchvision.datasets import FashionMNIST

import fmsweep
from fmsweep import checkpoint, data, train
from fmsweep.errors import Interrupted
from fmsweep.results import figures


def test_the_public_api_is_listed_and_importing_it_loads_no_torch() -> None:
    script = (
        "import sys, fmsweep; print(dir(fmsweep)); print('torch' in sys.modules, 'pandas' in sys.modules); "
        "from fmsweep import *; print(callable(load_model), callable(load_sweep), 'torch' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["['CLASSES', 'load_model', 'load_sweep']", "False False", "True True True"]


def test_the_class_names_are_fashion_mnists_in_label_order_and_defined_once() -> None:
    assert tuple(FashionMNIST.classes) == fmsweep.CLASSES
    assert figures.CLASSES is fmsweep.CLASSES and not hasattr(data, "CLASSES")


def resumes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "Resuming from" in r.getMessage()]


def test_stop_and_resume_name_the_same_epoch(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped after the first batch of epoch 2 (400 training images: 13 batches of 32 an epoch), the run says so,
    and so does its resume; a run resumed at an epoch's end says after which epoch."""
    caplog.set_level(logging.INFO, logger=train.__name__)
    last = tmp_path / checkpoint.LAST
    SignalledSteps(monkeypatch, {14: signal.SIGINT})
    with pytest.raises(Interrupted):
        train.run(make_cfg("epochs=2"), tmp_path)
    stopped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert stopped == [f"Signal {signal.SIGINT}: saved {last} in epoch 2 after batch 1"]
    train.run(make_cfg("epochs=2"), tmp_path)
    assert resumes(caplog) == [f"Resuming from {last} in epoch 2 after batch 1"]
    caplog.clear()
    train.run(make_cfg("epochs=3"), tmp_path)  # the same run, one epoch longer
    assert resumes(caplog) == [f"Resuming from {last} after epoch 2"]
