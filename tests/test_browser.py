"""TensorBoard over the tiny sweep, served for real, checked through its HTTP API and rendered in headless
Chromium (Debian's `chromium`). Everything started here is stopped here, by process group."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"),
]
SCALARS = {
    "train/loss",
    "train/acc",
    "valid/loss",
    "valid/acc",
    "lr",
    "valid/best_loss",
    "valid/best_acc",
    "test/loss",
    "test/acc",
}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """End a process started with start_new_session=True, and whatever it started (its process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def request(url: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST `body` as JSON, as TensorBoard's frontend does) and decode the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    headers = {} if body is None else {"Content-Type": "application/json", "X-XSRF-Protected": "1"}
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30) as answer:
        return json.loads(answer.read())


@contextlib.contextmanager
def tensorboard(logdir: Path, log: Path) -> Iterator[str]:
    """`tensorboard --logdir logdir` on a free loopback port; yields its URL once /data/runs answers."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensorboard.main",
                "--logdir",
                str(logdir),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"tensorboard exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"tensorboard did not answer: {log.read_text()[-2000:]}"
            with contextlib.suppress(urllib.error.URLError, ConnectionError):
                request(url + "/data/runs")
                break
            time.sleep(0.5)
        yield url
    finally:
        stop(proc)


def chromium(url: str, profile: Path, screenshot: Path) -> str:
    """Load `url` in headless Chromium with a fresh profile; save a 1400x900 screenshot, return the rendered DOM."""
    proc = subprocess.Popen(
        [
            str(CHROMIUM),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--window-size=1400,900",
            "--virtual-time-budget=15000",
            f"--screenshot={screenshot}",
            "--dump-dom",
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        dom, err = proc.communicate(timeout=180)
    finally:
        stop(proc)  # its zygote and renderer processes too
    assert proc.returncode == 0, err[-2000:]
    return dom


def test_tensorboard_serves_and_renders_every_job_of_the_sweep(tiny_sweep: Path, tmp_path: Path) -> None:
    names = sorted(p.name for p in tiny_sweep.iterdir() if (p / ".hydra").is_dir())
    assert len(names) == 4
    with tensorboard(tiny_sweep, tmp_path / "tensorboard.log") as url:
        assert sorted(request(url + "/data/runs")) == names  # one run per job, named by its overrides

        scalar_tags = request(url + "/data/plugin/scalars/tags")
        image_tags = request(url + "/data/plugin/images/tags")
        for name in names:
            assert set(scalar_tags[name]) >= SCALARS
            query = urllib.parse.urlencode({"run": name, "tag": "valid/acc"})
            assert [step for _, step, _ in request(f"{url}/data/plugin/scalars/scalars?{query}")] == [1, 2]
            assert {"test/samples", "test/confusion_matrix"} <= set(image_tags[name])

        experiment = request(url + "/data/plugin/hparams/experiment", {"experimentName": ""})
        assert {h["name"] for h in experiment["hparamInfos"] if h["differs"]} == {"model", "overrides", "seed"}
        groups = request(
            url + "/data/plugin/hparams/session_groups",
            {
                "experimentName": "",
                "startIndex": 0,
                "sliceSize": 100,
                "colParams": [],
                "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            },
        )["sessionGroups"]
        assert sorted(g["name"] for g in groups) == names
        for group in groups:
            assert {"test/acc", "valid/best_loss"} <= {m["name"]["tag"] for m in group["metricValues"]}

        screenshot = tmp_path / "tensorboard-timeseries.png"
        dom = chromium(url + "/#timeseries", tmp_path / "chromium-profile", screenshot)
        print(f"screenshot: {screenshot}")

    missing = [name for name in names if name not in dom]
    assert not missing, f"run names not rendered: {missing}"
    pixels = matplotlib.image.imread(screenshot)
    assert pixels.shape[:2] == (900, 1400) and pixels.std() > 0.05
