"""Submitting a sweep's launcher jobs: SLURM arrays no larger than MaxArraySize, each job's id recorded as soon as
its array is submitted; and the ids as the sweep's lines show them. Attached: a job's end noticed within 0.2 s, and
a Ctrl-C amid the submission naming the jobs the record has."""

import contextlib
import json
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from conftest import wait_for
from omegaconf import OmegaConf
from submitit.core.core import InfoWatcher, Job

from fmsweep.sweep import cancel, feed, launch, manifest, status
from fmsweep.sweep.manifest import JobRecord, Manifest

# a SLURM launcher as launch.submit reads it: its executor kind, settings and Hydra's job name
SLURM_LAUNCHER = SimpleNamespace(
    _EXECUTOR="slurm", params={}, config=OmegaConf.create({"hydra": {"job": {"name": "fmsweep"}}})
)


class FakeExecutor:
    """Records the size of each submission and numbers arrays as SLURM does: `<array id>_<task>`; and what the
    record held as each was submitted."""

    def __init__(self, sweep_dir: Path) -> None:
        self.sizes: list[int] = []
        self.sweep_dir = sweep_dir
        self.recorded_before: list[int] = []
        self.names: list[str] = []
        self.intents: list[tuple[list[dict], list[str | None]]] = []

    def update_parameters(self, name: str) -> None:
        self.names.append(name)

    def look(self) -> None:
        # what the record held when this array was submitted: the arrays before it, all with their ids, and this
        # submission, without its id, named on its jobs
        saved = json.loads((self.sweep_dir / "sweep.json").read_text())
        self.recorded_before.append(sum(job["launcher_job"] is not None for job in saved["jobs"]))
        self.intents.append((saved["submissions"], [job["submission"] for job in saved["jobs"]]))

    def submit_array(self, units: list) -> list:
        self.look()
        array_id = 100 + len(self.sizes)
        self.sizes.append(len(units))
        return [SimpleNamespace(job_id=f"{array_id}_{i}") for i in range(len(units))]

    def submit(self, unit: object) -> SimpleNamespace:
        self.look()
        self.sizes.append(1)
        return SimpleNamespace(job_id=str(100 + len(self.sizes) - 1))


def slurm_sweep(sweep_dir: Path, jobs: int) -> Manifest:
    """A SLURM sweep of `jobs` jobs `<n>_seed=<n>`, recorded in `sweep_dir`, none submitted."""
    record = Manifest(
        sweep_dir=sweep_dir,
        kind="grid",
        launcher="slurm",
        command=[],
        cwd=str(sweep_dir),
        jobs=[JobRecord(num=n, name=f"{n}_seed={n}", overrides=[f"seed={n}"], epochs=1) for n in range(jobs)],
    )
    record.save()
    return record


@pytest.fixture(autouse=True)
def no_submit_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests here submit to a fake executor: the cluster's own limit (tests/slurm/start.sh) is not theirs."""
    monkeypatch.setattr(feed, "limit", lambda params, learned: None)


def test_a_grid_beyond_the_submit_limit_submits_what_fits_and_the_rest_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeExecutor(tmp_path)
    monkeypatch.setattr(launch, "executor", lambda launcher, name: fake)
    monkeypatch.setattr(launch, "max_array_size", lambda: 2)
    monkeypatch.setattr(feed, "limit", lambda params, learned: feed.Limit(8, "QOS q's MaxSubmitJobsPerUser", 3))
    monkeypatch.setattr(
        status, "look", lambda record, **kw: SimpleNamespace(alive={0}, finish_alive=False, silent=None)
    )
    manifest = slurm_sweep(tmp_path, 7)
    manifest.leave_free = 1
    planned = [([n], cast(launch.Unit, f"unit {n}")) for n in range(7)]
    submitted = launch.submit(SLURM_LAUNCHER, manifest, planned, reserve=1)
    # room: 8 of the limit, less 3 queued, 1 left free and 1 for the results job = 3, in arrays of at most 2
    assert fake.sizes == [2, 1] and len(submitted) == 3
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert [job["waiting"] for job in saved["jobs"]] == [False] * 3 + [True] * 4
    assert capsys.readouterr().out.splitlines()[-1] == (
        "fmsweep: the cluster's submit limit (8 jobs: QOS q's MaxSubmitJobsPerUser; 3 of yours queued, 1 left free "
        "(hydra.sweeper.leave_free)); 3 submitted, 4 not yet; they will be submitted as room frees up"
    )
    _, kept = feed.parked(tmp_path, manifest)
    assert kept == [([n], f"unit {n}") for n in range(3, 7)]  # what a job of the sweep submits as it ends


@pytest.mark.parametrize(("jobs", "sizes"), [(7, [3, 3, 1]), (6, [3, 3]), (1, [1])])
def test_slurm_jobs_go_in_arrays_of_at_most_max_array_size_and_each_id_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int, sizes: list[int]
) -> None:
    fake = FakeExecutor(tmp_path)
    monkeypatch.setattr(launch, "executor", lambda launcher, name: fake)
    monkeypatch.setattr(launch, "max_array_size", lambda: 3)
    manifest = slurm_sweep(tmp_path, jobs)
    submitted = launch.submit(SLURM_LAUNCHER, manifest, [([n], cast(launch.Unit, object())) for n in range(jobs)])
    assert fake.sizes == sizes
    assert len(submitted) == jobs
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert [job["launcher_job"] for job in saved["jobs"]] == [str(j.job_id) for j in submitted]
    # each sbatch named `fmsweep:<dir>:<sweep id>.<n>` and recorded, with its jobs, before it ran
    names = [f"fmsweep:{tmp_path.name}:{saved['sweep_id']}.{n}" for n in range(len(sizes))]
    assert fake.names == names
    for n, (entries, on_jobs) in enumerate(fake.intents):
        assert entries[n] == {"name": names[n], "kind": "jobs", "count": sizes[n], "id": None}
        assert on_jobs[3 * n : 3 * n + sizes[n]] == [names[n]] * sizes[n]
    assert [entry["id"] for entry in saved["submissions"]] == [str(100 + n) for n in range(len(sizes))]
    # a job's index in its array; a lone job (an array of one would be one task) has none
    assert [job["task"] for job in saved["jobs"]] == [None if sizes[n // 3] == 1 else n % 3 for n in range(jobs)]
    if len(sizes) > 1:  # each array submitted after the ids of those before it were saved
        assert len(fake.recorded_before) >= 2
        assert fake.recorded_before == [3 * i for i in range(len(fake.recorded_before))]


def test_a_pack_shares_its_launcher_job_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeExecutor(tmp_path)
    monkeypatch.setattr(launch, "executor", lambda launcher, name: fake)
    monkeypatch.setattr(launch, "max_array_size", lambda: 1001)
    manifest = Manifest(
        sweep_dir=tmp_path,
        kind="grid",
        launcher="slurm",
        command=[],
        cwd=str(tmp_path),
        jobs=[JobRecord(num=n, name=str(n), overrides=[], epochs=1) for n in range(3)],
    )
    manifest.save()
    launch.submit(
        SLURM_LAUNCHER,
        manifest,
        [([0, 1], cast(launch.Unit, object())), ([2], cast(launch.Unit, object()))],
    )
    assert [job.launcher_job for job in manifest.jobs] == ["100_0", "100_0", "100_1"]


def test_ids_are_shown_by_array() -> None:
    assert manifest.ids_text(["7_0", "7_1", "7_2", "9"]) == "7 (array of 3), 9"


def test_max_array_size_is_read_from_slurm_or_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        launch.subprocess,
        "run",
        lambda *a, **k: SimpleNamespace(stdout="KillWait                = 30 sec\nMaxArraySize            = 40\n"),
    )
    assert launch.max_array_size() == 40

    def missing(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("scontrol")

    monkeypatch.setattr(launch.subprocess, "run", missing)
    assert launch.max_array_size() == launch.DEFAULT_MAX_ARRAY_SIZE


class Queued(InfoWatcher):
    """A scheduler that lists every job as running: a job is done once its result file is there."""

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        return False


class QueuedJob(Job):
    """A submitit job as submitit reads it (its done(), results(), wait()), on a scheduler that lists it as running."""

    watcher = Queued()


class Clock:
    """time.sleep on a clock that the test drives: `job` ends (its result file appears, as submitit's job writes it)
    1 ms after the first look that found it running, the worst moment for a look at a fixed period."""

    def __init__(self, job: Job) -> None:
        self.job, self.now = job, 0.0
        self.end: float | None = None

    def sleep(self, seconds: float) -> None:
        if self.end is None:
            self.end = self.now + 0.001
        self.now += seconds
        if self.now >= self.end and not self.job.paths.result_pickle.exists():
            self.job.paths.result_pickle.write_bytes(pickle.dumps(("success", 3)))


def test_an_attached_sweep_notices_a_job_end_within_a_fifth_of_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """launch.wait looks at a job more often than submitit's own wait (once a second): an attached sweep goes on
    (its next job, its results) at most 0.2 s after a job ended, counted on the clock from the end."""
    job = QueuedJob(tmp_path, "7")
    clock = Clock(job)
    monkeypatch.setattr(time, "sleep", clock.sleep)  # launch's and submitit's
    assert launch.wait([job]) is None and clock.end is not None
    assert clock.now - clock.end <= 0.2


class SlurmLauncher:
    """What launch.launch reads of Hydra's SLURM launcher, which it tells apart by its class name."""

    _EXECUTOR = "slurm"
    params = SLURM_LAUNCHER.params
    config = SLURM_LAUNCHER.config
    hydra_context = task_function = None


class CtrlCAmidSubmission(FakeExecutor):
    """Submits the first array; Ctrl-C comes while the second one is submitted."""

    def submit_array(self, units: list) -> list:
        if self.sizes:
            raise KeyboardInterrupt
        return super().submit_array(units)


def test_ctrl_c_amid_a_submission_names_the_jobs_the_record_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The array submitted before the Ctrl-C keeps running on SLURM: the line names it, from the record (the
    submission never returned its jobs)."""
    fake = CtrlCAmidSubmission(tmp_path)
    monkeypatch.setattr(launch, "executor", lambda launcher, name: fake)
    monkeypatch.setattr(launch, "max_array_size", lambda: 2)
    monkeypatch.setattr(status, "slurm_view", lambda ids, accounting=True: {})  # fake ids: no cluster asked
    jobs = [JobRecord(num=n, name=f"{n}_seed={n}", overrides=[f"seed={n}"], epochs=1) for n in range(4)]
    record = Manifest(sweep_dir=tmp_path, kind="grid", launcher="slurm", command=[], cwd=str(tmp_path), jobs=jobs)
    configs = {job.num: OmegaConf.create({"pack": 1, "hydra": {"sweep": {"subdir": job.name}}}) for job in jobs}
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exited:
            launch.launch(SlurmLauncher(), record, configs)
    finally:
        signal.signal(signal.SIGINT, handler)  # the interrupted launch ignores SIGINT from then on
    assert exited.value.code == 128 + signal.SIGINT and fake.sizes == [2]
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("fmsweep: interrupted; the sweep's SLURM jobs 100 (array of 2) keep running"), line


def test_a_cancel_amid_a_submission_keeps_its_marks_and_stops_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fmsweep cancel` marks the record between two arrays of a submission: the launcher keeps the marks, with the
    first array's ids, and submits no other array."""
    entered = 0
    locked = manifest.locked

    @contextlib.contextmanager
    def cancel_between(sweep_dir: Path) -> Iterator[None]:
        nonlocal entered
        entered += 1
        if entered == 2:  # the cancel got the record's lock once the first array was recorded
            cancel.record(sweep_dir)
        with locked(sweep_dir):
            yield

    monkeypatch.setattr(launch, "locked", cancel_between, raising=False)
    fake = FakeExecutor(tmp_path)
    monkeypatch.setattr(launch, "executor", lambda launcher, name: fake)
    monkeypatch.setattr(launch, "max_array_size", lambda: 3)
    record = slurm_sweep(tmp_path, 7)
    units = [([n], cast(launch.Unit, object())) for n in range(7)]
    submitted = launch.submit(SLURM_LAUNCHER, record, units)
    assert fake.sizes == [3] and len(submitted) == 3
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert [job["launcher_job"] for job in saved["jobs"]] == ["100_0", "100_1", "100_2", None, None, None, None]
    assert all(job["cancelled"] for job in saved["jobs"])
    assert "cancelled while it was submitted: 4 job(s) not submitted" in capsys.readouterr().out


def waiters(path: Path) -> int:
    """How many processes or threads wait for the flock of `path` now (/proc/locks marks them `->`)."""
    inode = path.stat().st_ino
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(line.split()[1] == "->" and line.split()[6].endswith(f":{inode}") for line in lines)


def test_fmsweep_cancel_marks_the_record_under_its_lock(tmp_path: Path) -> None:
    """A cancel waits for the record's lock (a launcher recording ids holds it), then marks the record as it is
    then: the ids written meanwhile stay."""
    record = slurm_sweep(tmp_path, 2)
    with manifest.locked(tmp_path):
        canceller = threading.Thread(target=cancel.record, args=(tmp_path,))
        canceller.start()
        wait_for("cancel waiting for the record's lock", lambda: waiters(tmp_path / manifest.LOCK) == 1, timeout=60)
        record.jobs[0].launcher_job = "100_0"  # what a launcher records while it holds the lock
        record.save()
    canceller.join()
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert [(job["launcher_job"], job["cancelled"]) for job in saved["jobs"]] == [("100_0", True), (None, True)]


def test_a_submission_name_is_never_given_twice(tmp_path: Path) -> None:
    """A dropped submission (SLURM never took it) keeps its number: a later one that SLURM would find under the
    same name could be taken for it. The count survives the record's rewrite."""
    from fmsweep.sweep import submission

    record = slurm_sweep(tmp_path, 1)
    first = submission.begin(record, "jobs", 1, "fmsweep:x")
    submission.drop(record, first)
    second = submission.begin(record, "jobs", 1, "fmsweep:x")
    assert (first.name, second.name) == (f"fmsweep:x:{record.sweep_id}.0", f"fmsweep:x:{record.sweep_id}.1")
    record.save()
    reread = manifest.load(tmp_path)
    assert reread is not None and submission.begin(reread, "results", 1, "fmsweep:x").name.endswith(".2")
