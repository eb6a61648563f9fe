"""A search's workers (fmsweep.sweep.worker) as run_search makes them, in this process under the basic launcher:
one slot there, whatever n_jobs says; a worker composes a combination of group choices once for all its trials;
a trial that another process trains is left to it instead of being taken again."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CONF, ROOT, fast_overrides
from hydra import initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.config_loader import ConfigLoader
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig
from optuna.trial import TrialState
from test_prelaunch import hydra_compositions

from fmsweep.__main__ import task
from fmsweep.sweep import launch, manifest, prelaunch
from fmsweep.sweep.worker import Worker

SPACE = ["model=linear", "optimizer.lr=tag(log,interval(1e-4,1e-1))"]
# holds the lock of the run dir argv[1] until its stdin closes, as a run training there does
HOLD = (
    "import sys\nfrom pathlib import Path\nfrom fmsweep.sweep.lock import hold\n"
    "with hold([Path(sys.argv[1])]):\n    print('held', flush=True)\n    sys.stdin.read()"
)


class Launched(Exception):
    """Raised in place of launch_workers: the workers run_search made, not run."""

    def __init__(self, workers: list[Worker]) -> None:
        super().__init__()
        self.workers = workers


@pytest.fixture
def loader() -> Iterator[ConfigLoader]:
    """Hydra's config loader for fmsweep's config, as the command line has it. A trial run here configures this
    process's logging as Hydra's jobs do: the root logger is put back as it was for the tests after this one."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="fmsweep"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        yield hydra.config_loader
    root.handlers[:] = handlers
    root.setLevel(level)


def search_workers(
    loader: ConfigLoader, data_root: Path, sweep_dir: Path, monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[list[Worker], DictConfig]:
    """The workers that `fmsweep -m hydra/sweeper=optuna SPACE args` (basic launcher) makes to run its trials, its
    study and record written; and its master config."""
    master = loader.load_configuration(
        "config",
        [
            "hydra/sweeper=optuna",
            "hydra.mode=MULTIRUN",
            f"hydra.sweep.dir={sweep_dir}",
            *fast_overrides(data_root),
            *SPACE,
            *args,
        ],
        run_mode=RunMode.MULTIRUN,
    )
    sweeper = Plugins.instance().instantiate_sweeper(
        hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks(master)), task_function=task, config=master
    )

    def launched(launcher: object, record: manifest.Manifest, workers: list[Worker], detach: bool) -> None:
        raise Launched(workers)

    monkeypatch.setattr(launch, "launch_workers", launched)
    with pytest.raises(Launched) as caught:
        sweeper.sweep(list(master.hydra.overrides.task))
    return caught.value.workers, master


def test_the_basic_launcher_runs_one_slot_whatever_n_jobs_says(
    loader: ConfigLoader,
    data_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Its trials run one after another in the launching process: a second worker there would only find nothing
    left, and the line would promise two slots."""
    workers, _ = search_workers(
        loader, data_root, tmp_path, monkeypatch, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2"
    )
    assert len(workers) == 1
    out = capsys.readouterr().out
    assert "the basic launcher runs one trial at a time (hydra.sweeper.n_jobs=2 needs" in out
    assert "fmsweep: 1 worker for 4 trials\n" in out


def test_a_worker_composes_its_group_choices_once_for_all_its_trials(
    loader: ConfigLoader, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hydra's composition (~50 ms) runs once per worker for a combination of group choices; each trial's config
    is derived from it (a few ms), the worker keeping one composer from trial to trial."""
    [worker], _ = search_workers(loader, data_root, tmp_path, monkeypatch, "hydra.sweeper.n_trials=2")
    compositions = hydra_compositions(loader, monkeypatch)
    assert worker("w") == 2
    assert [t.state for t in worker.plan.study().trials] == [TrialState.COMPLETE] * 2
    assert compositions == [["model=linear"]]


def test_a_worker_leaves_a_trial_another_process_trains_to_it(
    loader: ConfigLoader, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker w took trial 0 (the record names it), and finds its run dir held by another process: it leaves the
    trial to that one, which tells the study, instead of taking it again and again; the search has no other trial
    to run, so the worker ends."""
    [worker], master = search_workers(loader, data_root, tmp_path, monkeypatch, "hydra.sweeper.n_trials=1")
    study = worker.plan.study()
    with manifest.locked(tmp_path):  # trial 0 taken by w, as the worker takes one
        record = manifest.require(tmp_path)
        [num] = worker.take(study, record, "w", prelaunch.SweepComposer(loader, master), set())
        job = record.job(num)
        assert job is not None
        job.launcher_job = "w"
        record.save()
    run_dir = tmp_path / job.name
    runs: list[str] = []
    call = launch.Unit.__call__

    def once(unit: launch.Unit, job_id: str | None = None) -> object:
        runs.append(str(unit.config.hydra.sweep.subdir))
        assert runs.count(runs[-1]) == 1, f"{runs[-1]} taken again"
        return call(unit, job_id)

    monkeypatch.setattr(launch.Unit, "__call__", once)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == "held\n"
        assert worker("w") == 0
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert runs == [run_dir.name]
    assert study.trials[num].state == TrialState.RUNNING  # the other process tells it
    assert not (run_dir / "metrics.json").exists()


def test_one_orphan_has_one_taker(
    loader: ConfigLoader, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 0's worker is gone (its pid dead) and nobody holds its run dir: the first worker to look takes it,
    and names itself in the record under the same lock; the next worker finds the trial in a live worker's hands
    and asks a new trial instead (the negative control: before the first took it, it was an orphan to both)."""
    [worker], master = search_workers(loader, data_root, tmp_path, monkeypatch, "hydra.sweeper.n_trials=2")
    study, composer = worker.plan.study(), prelaunch.SweepComposer(loader, master)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)

    def take(worker_id: str) -> list[int]:
        """What worker `worker_id` takes, as Worker.__call__ does: under the record's lock, naming itself."""
        with manifest.locked(tmp_path):
            record = manifest.require(tmp_path)
            record.launcher = "submitit_local"  # a worker's id is its pid: a live one keeps its trials
            taken = list(worker.take(study, record, worker_id, composer, set()))
            for num in taken:
                job = record.job(num)
                assert job is not None
                job.launcher_job = worker_id
            record.save()
        return taken

    assert take(dead.stdout.strip()) == [0]  # trial 0's worker, which ended without telling the study
    with manifest.locked(tmp_path):
        record = manifest.require(tmp_path)
        assert list(worker.take(study, record, "b", composer, set())) == [0]  # an orphan, to anyone looking
    assert take(str(os.getpid())) == [0]  # the first to take it: a live worker
    assert take("b") == [1]  # the next one leaves it to that one and asks a new trial
    assert [job.launcher_job for job in manifest.require(tmp_path).jobs] == [str(os.getpid()), "b"]
