"""Shared fixtures: tiny Fashion-MNIST-format IDX files with learnable class structure, config composition, the
gate that holds a job's training at an epoch's end; the suite's guards: no network, `--fail-on-skip`, the `ci`
Hypothesis profile; FMSWEEP_TEST_LOAD=1 runs the suite with every core kept busy by a CPU burner."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hypothesis import settings
from omegaconf import DictConfig
from torchvision.datasets import FashionMNIST

from fmsweep import gate

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def closed_port() -> int:
    """A loopback port that nothing listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# No test downloads, on a machine with internet or without. torchvision's mirrors point at a closed port, so a
# download that a test provokes fails by construction; subprocesses (the CLI, sweep jobs) get a proxy there.
NOWHERE = f"http://127.0.0.1:{closed_port()}/"
FashionMNIST.mirrors = [NOWHERE]
os.environ.update(
    http_proxy=NOWHERE,
    https_proxy=NOWHERE,
    HTTP_PROXY=NOWHERE,
    HTTPS_PROXY=NOWHERE,
    no_proxy="127.0.0.1,localhost",
    NO_PROXY="127.0.0.1,localhost",
)

settings.register_profile("ci", derandomize=True)  # CI: the same examples on every run


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # a host name
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process, a connection to anything but loopback is an error."""
    connect = socket.socket.connect

    def loopback_only(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(str(address[0])):
            raise OSError(f"tests must not use the network (connect to {address})")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fail-on-skip",
        default="",
        metavar="MARKERS",
        help="comma-separated markers (e.g. slurm,browser) whose tests fail instead of skipping: "
        "where the services are known to be there, a skip means something broke",
    )
    parser.addoption(
        "--chaos-seeds",
        type=int,
        default=1,
        metavar="N",
        help="tests/test_chaos.py runs the grid and the search under the faults of seeds 0..N-1 (default 1: CI)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`-n 2 --dist loadgroup`, as CI runs), the tests of the cluster (slurm, mariadb) run on one
    worker, one after another, while the other worker runs the rest: the cluster's one node has as many CPUs as the
    machine, and a test that holds jobs at the gate would keep another's waiting."""
    for item in items:
        if item.get_closest_marker("slurm") or item.get_closest_marker("mariadb"):
            item.add_marker(pytest.mark.xdist_group("cluster"))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Where pytest-xdist cannot group (the cluster's tests would run on both workers at once), stop before any
    test runs rather than let them race for the cluster's CPUs."""
    if not session.config.getoption("loadgroup", False):
        return
    loose = [item.nodeid for item in session.items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if loose:
        raise pytest.UsageError(
            f"pytest-xdist did not group {loose[0]} (pytest {pytest.__version__}, pytest-dev/pytest-xdist#1386): "
            "run with a pytest that pyproject.toml's test extra allows"
        )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes `chaos_seed` runs once per seed of --chaos-seeds."""
    if "chaos_seed" in metafunc.fixturenames:
        metafunc.parametrize("chaos_seed", range(metafunc.config.getoption("--chaos-seeds")))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    required = {m for m in item.config.getoption("--fail-on-skip").split(",") if m}
    marked = sorted(m for m in required if item.get_closest_marker(m))
    if report.skipped and marked:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"--fail-on-skip={','.join(marked)}: this test skipped ({reason})"


BURNER = "import os, sys\nwhile os.getppid() == int(sys.argv[1]):\n    sum(range(100_000))"


@pytest.fixture(scope="session", autouse=True)
def cpu_load() -> Iterator[None]:
    """With FMSWEEP_TEST_LOAD=1, one busy process per core for the whole session (each ends with pytest, however
    pytest ends): the suite must pass on a machine that something else keeps busy."""
    if os.environ.get("FMSWEEP_TEST_LOAD") != "1":
        yield
        return
    burners = [subprocess.Popen([sys.executable, "-c", BURNER, str(os.getpid())]) for _ in range(os.cpu_count() or 1)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def wait_for(what: str, condition: Callable[[], object], timeout: float = 600, every: float = 0.1) -> None:
    """Wait for a state: poll `condition` until it holds. The timeout only keeps a broken test from hanging."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


class Gate:
    """The test's side of fmsweep.gate: holds every run started from now on (the processes, local or SLURM jobs,
    inherit the variable) at the end of an epoch until the test lets it go."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def hold(self, epoch: int) -> None:
        """Runs wait once they committed `epoch` (and at every epoch after it)."""
        tmp = self.folder / "hold.tmp"
        tmp.write_text(str(epoch))
        tmp.replace(self.folder / "hold")  # a run never reads half a number

    def release(self) -> None:
        """Let every run go on to its end."""
        (self.folder / "hold").unlink(missing_ok=True)

    def let_go(self, name: str, epoch: int) -> None:
        """Let the run of dir `name`, held after `epoch`, go on (to the next epoch the gate holds)."""
        (self.folder / f"{name}@{epoch}").unlink()

    def held(self, epoch: int) -> list[str]:
        """The names of the run dirs that reached the gate at the end of `epoch`."""
        return sorted(p.name.rsplit("@", 1)[0] for p in self.folder.glob(f"*@{epoch}"))

    def wait_held(self, epoch: int, runs: int = 1, alive: Callable[[], bool] = lambda: True) -> list[str]:
        """Wait until `runs` run dirs wait at the end of `epoch` (while `alive`, e.g. their command runs); their
        names."""
        wait_for(f"{runs} run(s) held after epoch {epoch}", lambda: len(self.held(epoch)) >= runs or not alive())
        assert alive(), f"the command ended before {runs} run(s) reached epoch {epoch}"
        return self.held(epoch)


@pytest.fixture
def held(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """A gate for the runs this test starts; released at the test's end, so that no job it leaves waits forever."""
    g = Gate(tmp_path_factory.mktemp("gate"))
    monkeypatch.setenv(gate.ENV, str(g.folder))
    yield g
    g.release()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format torchvision reads (magic 0x08 type, ndim, big-endian dims)."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_fashion_root(root: Path, n_train: int = 500, n_test: int = 200, seed: int = 0, noise: float = 90) -> Path:
    """Create root/FashionMNIST/raw with four IDX files: one smooth prototype per class, plus noise and shifts."""
    rng = np.random.default_rng(seed)
    base = rng.random((7, 7))
    prototypes = np.kron(0.6 * base + 0.4 * rng.random((10, 7, 7)), np.ones((4, 4))) * 200

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        x = prototypes[labels] + rng.normal(0, noise, (n, 28, 28))
        shifts = rng.integers(-1, 2, size=n)
        x = np.stack([np.roll(img, s, axis=1) for img, s in zip(x, shifts)])
        return np.clip(x, 0, 255).astype(np.uint8), labels.astype(np.uint8)

    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        x, y = images(n)
        write_idx(raw / f"{split}-images-idx3-ubyte", x)
        write_idx(raw / f"{split}-labels-idx1-ubyte", y)
    return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fashion_root(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="session")
def clear_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Less noise than `data_root`: every model, the convolutional ones too, learns it within 3 epochs."""
    return make_fashion_root(tmp_path_factory.mktemp("clear"), noise=40)


def fast_overrides(data_root: Path) -> list[str]:
    """Overrides that make a run take about a second on CPU on the tiny data."""
    return [f"data.root={data_root}", "data.download=false", "epochs=1", "batch_size=32", "device=cpu"]


@pytest.fixture
def make_cfg(data_root: Path):
    """Compose the app config the way `python -m fmsweep <overrides>` does."""

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=[*fast_overrides(data_root), *overrides])

    return _compose


SWEEP_JOBS = ["model=linear,fc", "seed=0,1"]


def sweep_jobs(data_root: Path, sweep_dir: Path) -> Path:
    """Run the sweep SWEEP_JOBS (linear and fc, seeds 0 and 1, 2 epochs) on `data_root` by the real command line."""
    args = [f"data.root={data_root}", "data.download=false", "device=cpu", "batch_size=64", "epochs=2", *SWEEP_JOBS]
    proc = subprocess.run(
        [sys.executable, "-m", "fmsweep", "-m", *args, f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return sweep_dir


@pytest.fixture(scope="session")
def tiny_sweep(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished sweep (SWEEP_JOBS) by the real command line. Do not write into it; tests that change it work on
    a copy."""
    return sweep_jobs(data_root, tmp_path_factory.mktemp("sweep"))


def cluster_answers() -> bool:
    """Whether a SLURM cluster answers here (sbatch and sinfo on the PATH, sinfo succeeding)."""
    if not (shutil.which("sbatch") and shutil.which("sinfo")):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


needs_cluster = pytest.mark.skipif(
    not cluster_answers(), reason="no SLURM cluster answers (sbatch/sinfo); start one with tests/slurm/start.sh"
)
