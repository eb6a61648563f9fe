"""hydra.sweeper.storage: where a search's study lives. Fast checks of what is refused before launch, of masking and
of the journal and sqlite storages; with the MariaDB server of the test cluster (marker mariadb), a study shared by
processes, a wrong password, and a whole search through the command line whose password ends up nowhere."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from conftest import CONF, ROOT, Gate, closed_port
from hydra import compose, initialize_config_dir
from hypothesis import given
from hypothesis import strategies as st
from optuna.trial import TrialState
from test_search import command

from fmsweep.errors import UserError
from fmsweep.sweep import storage

ENV = "FMSWEEP_DB_PASSWORD"
SOCKET = "/run/mysqld/mysqld.sock"


def refusal(spec: str | None) -> str:
    """The one line `check` refuses `spec` with."""
    with pytest.raises(UserError) as caught:
        storage.check(spec)
    assert "\n" not in str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize(
    "spec",
    [
        "mysql+pymysql://fm:hunter2@localhost/fm",
        "mysql+pymysql://fm:${oc.env:FMSWEEP_OTHER,hunter2}@localhost/fm",
        "mysql+pymysql://fm:pre${oc.env:FMSWEEP_OTHER}hunter2@localhost/fm",
        "postgresql+psycopg://fm@localhost/fm?sslmode=disable&password=hunter2",
    ],
)
def test_a_written_password_is_refused_with_the_way_to_take_it_from_the_environment(spec: str) -> None:
    line = refusal(spec)
    assert "hunter2" not in line and "***" in line
    assert f"export {ENV}=" in line and "${oc.env:FMSWEEP_DB_PASSWORD}" in line
    # the URL it proposes is the user's own, with the password from the environment, and passes the check
    proposed = line.split("hydra.sweeper.storage='")[1].split("'")[0]
    assert proposed.startswith(spec.split(":")[0] + "://fm") and "${oc.env:FMSWEEP_DB_PASSWORD}" in proposed


@pytest.mark.parametrize(
    "spec, words",
    [
        ("not a url", "is not a database URL Optuna's RDB storage takes"),
        ("redis://localhost/0", "is not a database URL Optuna's RDB storage takes"),
        ("mysql+nodriver://fm@localhost/fm", "is not a database URL Optuna's RDB storage takes"),
        ("sqlite://", "in-memory database"),
        ("sqlite:///:memory:", "in-memory database"),
    ],
)
def test_a_storage_optuna_cannot_use_is_refused(spec: str, words: str) -> None:
    line = refusal(spec)
    assert words in line and "nothing was launched" in line


@pytest.mark.parametrize(
    "spec, module, install",
    [
        ("mysql+pymysql://fm@localhost/fm", "pymysql", "pip install pymysql"),
        ("mysql://fm@localhost/fm", "MySQLdb", "pip install mysqlclient"),
        ("postgresql+psycopg://fm@localhost/fm", "psycopg", "pip install 'psycopg[binary]'"),
    ],
)
def test_a_missing_driver_is_refused_with_what_to_install(
    spec: str, module: str, install: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    assert install in refusal(spec)


def test_a_missing_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMSWEEP_NOT_SET", raising=False)
    line = refusal("mysql+pymysql://fm:${oc.env:FMSWEEP_NOT_SET}@localhost/fm")
    assert "needs the environment variable FMSWEEP_NOT_SET, which is not set" in line
    with pytest.raises(UserError, match="FMSWEEP_NOT_SET"):
        storage.resolve("${oc.env:FMSWEEP_NOT_SET}")


def test_a_password_with_an_at_sign_must_be_url_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "hunt@r2")
    line = refusal("mysql+pymysql://fm:${oc.env:FMSWEEP_DB_PASSWORD}@localhost/fm")
    assert "URL-encode it" in line and "hunt@r2" not in line


def test_check_accepts_what_optuna_can_use_and_connects_to_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV, "hunter2")
    nowhere = f"127.0.0.1:{closed_port()}"
    for spec in (
        None,
        f"sqlite:///{tmp_path}/study.db",
        "mysql+pymysql://fm@localhost/fm",
        f"mysql+pymysql://fm:${{oc.env:{ENV}}}@{nowhere}/fm",
        f"mysql+pymysql://fm:@{nowhere}/fm",
        f"mysql+pymysql://${{oc.env:{ENV}}}:${{oc.env:{ENV}}}@{nowhere}/fm",
    ):
        storage.check(spec)
    assert not (tmp_path / "study.db").exists()


def test_resolve_takes_the_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "hunter2")
    assert (
        storage.resolve("mysql+pymysql://fm:${oc.env:FMSWEEP_DB_PASSWORD}@localhost/fm")
        == "mysql+pymysql://fm:hunter2@localhost/fm"
    )


@pytest.mark.parametrize(
    "text, masked",
    [
        ("mysql+pymysql://fm:hunter2@localhost/fm", "mysql+pymysql://fm:***@localhost/fm"),
        (
            "(pymysql) 'mysql+pymysql://fm:hunt@r2@localhost:3306/fm' and postgresql://u:s3cr3t@db/x: refused",
            "(pymysql) 'mysql+pymysql://fm:***@localhost:3306/fm' and postgresql://u:***@db/x: refused",
        ),
        (
            "postgresql://db/x?sslmode=disable&password=hunter2&a=b",
            "postgresql://db/x?sslmode=disable&password=***&a=b",
        ),
        (
            "mysql+pymysql://fm:${oc.env:FMSWEEP_DB_PASSWORD}@localhost/fm",
            "mysql+pymysql://fm:${oc.env:FMSWEEP_DB_PASSWORD}@localhost/fm",
        ),
        ("mysql+pymysql://fm:${oc.env:PW,hunter2}@localhost/fm", "mysql+pymysql://fm:***@localhost/fm"),
        (
            "sqlite:///runs/a:b@c.db, https://example.org/x, user@host",
            "sqlite:///runs/a:b@c.db, https://example.org/x, user@host",
        ),
    ],
)
def test_mask_hides_every_written_password(text: str, masked: str) -> None:
    assert storage.mask(text) == masked


@given(st.text(st.characters(blacklist_categories=("Z", "C"), blacklist_characters="'\"$"), min_size=1))
def test_mask_hides_any_password(password: str) -> None:
    line = f"cannot open mysql+pymysql://fm:{password}@localhost/fm: denied"
    assert storage.mask(line) == "cannot open mysql+pymysql://fm:***@localhost/fm: denied"


def hydra_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_spec_is_the_storage_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)  # unresolved: the variable need not even be set
    url = "mysql+pymysql://fm:${oc.env:FMSWEEP_DB_PASSWORD}@localhost/fm"
    assert storage.spec(hydra_config("hydra/sweeper=optuna", f"hydra.sweeper.storage={url}")) == url
    assert storage.spec(hydra_config("hydra/sweeper=optuna")) is None
    assert storage.spec(hydra_config()) is None  # a grid sweep's sweeper has no storage


def test_describe_names_the_journal_or_the_masked_url(tmp_path: Path) -> None:
    assert storage.describe(None, tmp_path) == str(tmp_path / "optuna.journal")
    url = "mysql+pymysql://fm:${oc.env:FMSWEEP_DB_PASSWORD}@localhost/fm"
    assert storage.describe(url, tmp_path) == url
    assert (
        storage.describe("mysql+pymysql://fm:hunter2@localhost/fm", tmp_path) == "mysql+pymysql://fm:***@localhost/fm"
    )


def ask_and_tell(study: optuna.Study, trials: int) -> None:
    for _ in range(trials):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        study.tell(trial, trial.params["x"] ** 2)


@pytest.mark.parametrize("url", [None, "sqlite:///{tmp_path}/study.db"])
def test_a_study_lives_in_the_journal_or_a_database(url: str | None, tmp_path: Path) -> None:
    spec = url and url.format(tmp_path=tmp_path)
    ask_and_tell(optuna.create_study(study_name=storage.STUDY, storage=storage.open(spec, tmp_path)), 3)
    study = optuna.load_study(study_name=storage.STUDY, storage=storage.open(spec, tmp_path))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert (tmp_path / ("study.db" if url else storage.JOURNAL)).is_file()


def test_a_database_that_cannot_be_opened_is_one_line_without_its_password(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot open the Optuna storage sqlite:///"):
        storage.open(f"sqlite:///{tmp_path}/missing/study.db", tmp_path)
    with pytest.raises(UserError) as caught:
        storage.open(f"mysql+pymysql://fm:hunter2@127.0.0.1:{closed_port()}/fm", tmp_path)
    assert "hunter2" not in str(caught.value) and "fm:***@127.0.0.1" in str(caught.value)


@dataclass(frozen=True)
class Database:
    """A MariaDB database and a user of its own, that only this test knows the password of."""

    name: str
    user: str
    password: str

    def url(self, password: str = f"${{oc.env:{ENV}}}") -> str:
        return f"mysql+pymysql://{self.user}:{password}@localhost/{self.name}"


@pytest.fixture
def database() -> Iterator[Database]:
    """A fresh database and user on the test cluster's MariaDB server (tests/slurm/start.sh), reached as root on
    its socket; both dropped afterwards."""
    pymysql = pytest.importorskip("pymysql", reason="pip install pymysql (the test extra)")
    try:
        root = pymysql.connect(unix_socket=SOCKET, user="root", autocommit=True)
    except pymysql.MySQLError as exc:
        pytest.skip(f"no MariaDB server answers as root on {SOCKET} (start it with tests/slurm/start.sh): {exc}")
    tag = secrets.token_hex(4)
    db = Database(name=f"fmsweep_test_{tag}", user=f"fmsweep_test_{tag}", password=secrets.token_hex(16))
    with root.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{db.name}`")
        cursor.execute(f"CREATE USER '{db.user}'@'localhost' IDENTIFIED BY %s", (db.password,))
        cursor.execute(f"GRANT ALL ON `{db.name}`.* TO '{db.user}'@'localhost'")
    try:
        yield db
    finally:
        with root.cursor() as cursor:
            cursor.execute("SELECT id FROM information_schema.processlist WHERE user = %s", (db.user,))
            for (connection,) in cursor.fetchall():
                with contextlib.suppress(pymysql.MySQLError):  # it closed meanwhile
                    cursor.execute(f"KILL {int(connection)}")
            cursor.execute(f"DROP DATABASE IF EXISTS `{db.name}`")
            cursor.execute(f"DROP USER IF EXISTS '{db.user}'@'localhost'")
        root.close()


WORKER = """
import sys
from pathlib import Path
import optuna
from fmsweep.sweep import storage
study = optuna.load_study(study_name=sys.argv[2], storage=storage.open(sys.argv[1], Path(".")))
for _ in range(int(sys.argv[3])):
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(trial, trial.params["x"] ** 2)
"""


@pytest.mark.mariadb
def test_processes_share_a_study_in_mariadb(
    database: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV, database.password)
    storage.check(database.url())
    optuna.create_study(study_name=storage.STUDY, storage=storage.open(database.url(), tmp_path))
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, database.url(), storage.STUDY, "15"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        assert database.password not in out + err
    trials = optuna.load_study(study_name=storage.STUDY, storage=storage.open(database.url(), tmp_path)).trials
    assert sorted(t.number for t in trials) == list(range(30))
    assert all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.mariadb
def test_a_wrong_password_is_one_line_without_it(
    database: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wrong = secrets.token_hex(16)
    monkeypatch.setenv(ENV, wrong)
    with pytest.raises(UserError) as caught:
        storage.open(database.url(), tmp_path)
    line = str(caught.value)
    assert line.startswith(f"cannot open the Optuna storage mysql+pymysql://{database.user}:***@localhost/")
    assert "Access denied" in line and wrong not in line and database.password not in line and "\n" not in line


@pytest.mark.slow
@pytest.mark.mariadb
def test_a_search_keeps_its_study_in_mariadb_and_its_password_nowhere(
    database: Database, data_root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, held: Gate
) -> None:
    """Two workers share the study: the gate holds the trials after their first epoch until two are held at once,
    one of each worker, so that the workers ask, train and tell side by side whatever the machine's speed."""
    monkeypatch.setenv(ENV, database.password)  # the command and its jobs inherit it
    sweep_dir = tmp_path / "sweep"
    args = [
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "optimizer.lr=tag(log,interval(1e-4,1e-1))",
        "model=fc",
        "epochs=2",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        f"hydra.sweeper.storage={database.url()}",
    ]
    held.hold(1)
    proc = subprocess.Popen(
        command(data_root, sweep_dir, *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        side_by_side = held.wait_held(1, runs=2, alive=lambda: proc.poll() is None)
    finally:
        held.release()
        stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert database.password not in stdout + stderr
    files = {path: path.read_bytes() for path in sweep_dir.rglob("*") if path.is_file()}
    assert [path for path, data in files.items() if database.password.encode() in data] == []
    # what the sweep records of its storage is the URL as written
    assert any(database.url().encode() in data for data in files.values())
    study = storage.find_study(sweep_dir)  # from the storage multirun.yaml names, as the report finds it
    assert study is not None
    assert study.study_name == f"fmsweep:{sweep_dir.resolve()}"
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    # both workers trained trials, at once: the two trials held together are of two workers, and their logs
    # (each trial's first line to its last) overlap in time
    worker = {job["name"]: job["launcher_job"] for job in json.loads((sweep_dir / "sweep.json").read_text())["jobs"]}
    assert len(set(worker.values())) == 2 and len({worker[name] for name in side_by_side}) == 2, worker
    (start_a, end_a), (start_b, end_b) = (logged_span(sweep_dir / name) for name in side_by_side)
    assert start_a < end_b and start_b < end_a
    assert not (sweep_dir / storage.JOURNAL).exists()


def logged_span(run_dir: Path) -> tuple[datetime, datetime]:
    """The times of the first and the last line of a run's log (Hydra's `[%Y-%m-%d %H:%M:%S,%f]` stamps)."""
    stamps = re.findall(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]", (run_dir / "__main__.log").read_text(), re.M)
    assert stamps, run_dir
    return datetime.strptime(stamps[0], "%Y-%m-%d %H:%M:%S,%f"), datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S,%f")
