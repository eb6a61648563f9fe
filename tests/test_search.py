"""Optuna search (hydra/sweeper=optuna) through the real command line: trials as job dirs, pruning, a killed search
continued, a bad search space refused before any trial, and the other launchers."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import optuna
import pytest
from conftest import ROOT, Gate, wait_for
from omegaconf import OmegaConf
from optuna.trial import TrialState
from test_slurm import CPU_SLURM, needs_cluster

import fmsweep
from fmsweep.results import report
from fmsweep.results.runs import find_runs
from fmsweep.sweep import manifest, search, space, status, storage, worker
from fmsweep.sweep.trial import Halving, Trial, make_pruner

SPACE = ["model=fc", "optimizer.lr=tag(log,interval(1e-5,1))"]


def command(data_root: Path, sweep_dir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fmsweep",
        "-m",
        "hydra/sweeper=optuna",
        f"data.root={data_root}",
        "data.download=false",
        "device=cpu",
        "batch_size=64",
        *args,
        f"hydra.sweep.dir={sweep_dir}",
    ]


def run(data_root: Path, sweep_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(data_root, sweep_dir, *args), cwd=ROOT, capture_output=True, text=True, timeout=600)


def study(sweep_dir: Path) -> optuna.Study:
    found = storage.find_study(sweep_dir)
    assert found is not None
    return found


def test_a_search_runs_its_trials_as_job_dirs_and_tells_the_study(data_root: Path, tmp_path: Path, held: Gate) -> None:
    """The first trial is held after its first epoch until the live status showed it running: the search's other
    trials, which no worker asked yet, must be counted pending then (a status that counted only the trials asked
    so far would show none)."""
    sweep_dir, out, err = tmp_path / "sweep", tmp_path / "stdout", tmp_path / "stderr"
    held.hold(1)
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            command(
                data_root,
                sweep_dir,
                *SPACE,
                "reg.l2=tag(log,interval(1e-6,1e-2))",
                "epochs=2",
                "hydra.sweeper.n_trials=4",
                "hydra.sweeper.n_jobs=2",
            ),
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        [first] = held.wait_held(1, alive=lambda: proc.poll() is None)
        # the only trial asked yet: named by all its overrides, none being shared with another
        name = status.label(next(job for job in manifest.require(sweep_dir).jobs if job.name == first), [])
        shown = re.compile(rf"^fmsweep: {re.escape(name)} running \(.*\)$", re.M)
        wait_for(
            "the live status to show the held trial", lambda: shown.search(out.read_text()) or proc.poll() is not None
        )
        line = shown.search(out.read_text())
        assert line and line[0] == f"fmsweep: {name} running (3 pending, 1 running, 0 completed, 0 failed)"
    finally:
        held.release()
        proc.wait(timeout=600)
    printed = out.read_text()
    assert proc.returncode == 0, err.read_text()
    trials = study(sweep_dir).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    runs = find_runs(sweep_dir)
    assert [r.num for r in runs] == [0, 1, 2, 3]
    for trial, r in zip(trials, runs):
        assert r.overrides == sorted(
            [
                "batch_size=64",
                "epochs=2",
                "model=fc",
                f"optimizer.lr={trial.params['optimizer.lr']!r}",
                f"reg.l2={trial.params['reg.l2']!r}",
            ]
        )
        assert trial.value == r.metrics["valid_loss"] and 1e-5 <= r.config.optimizer.lr <= 1
    best = min(trials, key=lambda t: cast(float, t.value))
    assert f"fmsweep: best trial {best.number}: valid_loss {best.value:.4f}" in printed
    # in Python: the trials and the jobs with their searched values, typed; the best run is the best trial's
    loaded = fmsweep.load_sweep(sweep_dir)
    assert list(loaded.trials["number"]) == [0, 1, 2, 3] and set(loaded.trials["state"]) == {"COMPLETE"}
    for key in ("optimizer.lr", "reg.l2"):
        assert list(loaded.trials[f"params_{key}"]) == list(loaded.jobs[key]) == [t.params[key] for t in trials]
    assert loaded.best().value == best.value and loaded.best().job == str(best.number)
    assert "fmsweep: search of 4 trials: 4 complete, 0 pruned, 0 fail" in printed
    # every line of the live status counts the whole search
    counts = [
        tuple(map(int, m.groups()))
        for m in re.finditer(
            r"^fmsweep: \S+ .*\((\d+) pending, (\d+) running, (\d+) completed, (\d+) failed\)$", printed, re.M
        )
    ]
    assert counts and all(sum(c) == 4 for c in counts) and counts[-1] == (0, 0, 4, 0)


def test_the_pruner_stops_hopeless_trials_which_keep_their_checkpoints(data_root: Path, tmp_path: Path) -> None:
    proc = run(
        data_root,
        tmp_path,
        *SPACE,
        "epochs=4",
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.pruner=median",
        "hydra.sweeper.objective=valid_acc",
    )
    assert proc.returncode == 0, proc.stderr
    trials = study(tmp_path).trials
    assert len(trials) == 8 and TrialState.PRUNED in [t.state for t in trials]
    for r in find_runs(tmp_path):
        assert r.num is not None
        # each epoch before the last, the study got the objective of the trial's best checkpoint so far
        history = r.history()
        reported = {
            epoch: min(history[:epoch], key=lambda row: row["valid_loss"])["valid_acc"]
            for epoch in range(1, min(len(history), 3) + 1)
        }
        assert trials[r.num].intermediate_values == reported
        if r.metrics["status"] == "pruned":
            assert 1 <= r.metrics["pruned"] < 4 and r.metrics["epochs_run"] == r.metrics["pruned"]
            assert (r.path / "last.pt").is_file() and (r.path / "best_model.pt").is_file()
            # named by its own override, the searched value, as the report shows it
            name = space.display_overrides([f"optimizer.lr={trials[r.num].params['optimizer.lr']!r}"])[0]
            assert f"fmsweep: {name} pruned: at epoch {r.metrics['pruned']}" in proc.stdout
            assert r.status == f"pruned at epoch {r.metrics['pruned']}"
    assert "did not complete" not in proc.stderr  # pruned is not failed
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: cast(float, t.value))
    assert best.value is not None
    assert f"fmsweep: best trial {best.number}: valid_acc {100 * best.value:.2f} % with" in proc.stdout
    # the report lists the trials best first (valid_acc, maximized), pruned ones after, and the best trial's command
    markdown, written, best_setting = report.write_report(tmp_path)
    section = markdown.split("## Search")[1]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("|")][2:]
    done = [float(r[2]) for r in rows if r[1].strip() == "completed"]
    assert len(rows) == 8 and done == sorted(done, reverse=True)
    assert [r[1].strip().startswith("pruned") for r in rows] == sorted(r[1].strip().startswith("pruned") for r in rows)
    best = study(tmp_path).best_trial
    assert best.value is not None
    assert f"Best: trial {best.number}, valid_acc {100 * best.value:.2f} %." in section  # percent, for people
    assert f"optimizer.lr={best.params['optimizer.lr']!r}" in section.split("```bash")[1]
    assert tmp_path / "search.png" in written and (tmp_path / "search.png").stat().st_size > 0
    # the settings (one trial each) ranked by the search's objective: the best setting is the best trial, named at
    # the sweep's end with where its report is
    assert best_setting.startswith("best setting on validation: ") and "mean valid acc" in best_setting
    assert f"optimizer.lr={space.readable(best.params['optimizer.lr'])}" in best_setting
    assert f"fmsweep: {best_setting}\nfmsweep: report: {tmp_path / 'report.md'}" in proc.stdout


def test_a_trial_that_fails_its_check_on_a_worker_is_recorded_failed_with_the_reason(
    data_root: Path, tmp_path: Path, held: Gate
) -> None:
    """The data set is gone from the worker's node when it asks its second trial: the study is told FAIL, and the
    record and status say which trial failed and why, instead of counting it pending for ever."""
    data, sweep_dir = tmp_path / "data", tmp_path / "sweep"
    shutil.copytree(data_root, data)
    args = [*SPACE, "epochs=1", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1"]
    held.hold(1)  # trial 0 waits after its epoch while the data set goes away
    proc = subprocess.Popen(
        [*command(data, sweep_dir, *args)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    held.wait_held(1, alive=lambda: proc.poll() is None)
    data.rename(tmp_path / "gone")
    held.release()
    out = proc.communicate(timeout=600)[0]
    assert "fmsweep: trial 1 failed its check: " in out, out
    assert [t.state for t in study(sweep_dir).trials] == [TrialState.COMPLETE, TrialState.FAIL]
    record = manifest.require(sweep_dir)
    assert [job.name for job in record.jobs][1] == "1_check_failed" and record.not_asked() == 0
    shown = status.read(record)[1]
    assert shown.state == "failed" and shown.detail.startswith(f"failed its check on worker {proc.pid}: "), shown
    watched = subprocess.run(
        [sys.executable, "-m", "fmsweep.cli", "status", str(sweep_dir), "--watch", "--interval", "0.1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert watched.returncode == 1 and "2 trials (basic): 0 pending, 0 running, 1 completed, 1 failed" in watched.stdout


def test_a_killed_search_continues_in_its_sweep_dir(data_root: Path, tmp_path: Path, held: Gate) -> None:
    args = [*SPACE, "epochs=3", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1"]
    held.hold(2)  # trial 0 is let go at each epoch's end; trial 1 is killed where the gate holds it, after epoch 2
    proc = subprocess.Popen(
        command(data_root, tmp_path, *args),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def trial_1_held() -> bool:
        for epoch in (2, 3):
            for name in held.held(epoch):
                if name.startswith("0_"):
                    held.let_go(name, epoch)
        return any(name.startswith("1_") for name in held.held(2))

    wait_for("trial 1 held after epoch 2", lambda: trial_1_held() or proc.poll() is not None)
    assert proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    held.release()
    first = (next(tmp_path.glob("0_*")) / "metrics.json").stat().st_mtime_ns
    assert [t.state for t in study(tmp_path).trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    again = run(data_root, tmp_path, *args)
    assert again.returncode == 0, again.stderr
    assert [t.state for t in study(tmp_path).trials] == [TrialState.COMPLETE] * 3  # exactly n_trials
    assert (next(tmp_path.glob("0_*")) / "metrics.json").stat().st_mtime_ns == first  # not redone
    log = (next(tmp_path.glob("1_*")) / "__main__.log").read_text()
    assert "Resuming from" in log
    assert [r.num for r in find_runs(tmp_path)] == [0, 1, 2]


@pytest.mark.parametrize(
    "space,words",
    [
        ("optimizer.lr=tag(log,interval(0,1))", "optimizer.lr=tag(log,interval(0,1)): not a search space"),
        ("optimizer.lrr=interval(0.1,1)", "optimizer.lrr"),
        ("optimizer.lr=interval(2,1)", "optimizer.lr=interval(2,1): not a search space"),
        ("reg.dropout=interval(0.5,1.5)", "reg.dropout must be a number in [0, 1), got 1.5"),
        ("model=fc,fcc", "model=fcc"),
    ],
)
def test_a_bad_search_space_is_one_line_before_any_trial(
    data_root: Path, tmp_path: Path, space: str, words: str
) -> None:
    proc = run(data_root, tmp_path / "sweep", "model=fc", space, "hydra.sweeper.n_trials=2")
    assert proc.returncode == 2
    assert proc.stderr.startswith("fmsweep: error: ") and proc.stderr.count("\n") == 1 and words in proc.stderr
    assert not (tmp_path / "sweep").exists()


def test_halving_says_when_the_trials_are_too_short_to_prune(data_root: Path, tmp_path: Path) -> None:
    proc = run(data_root, tmp_path, *SPACE, "epochs=2", "hydra.sweeper.n_trials=1", "hydra.sweeper.pruner=halving")
    assert proc.returncode == 0, proc.stderr
    assert "fmsweep: note: pruner=halving stops trials at epochs 1, 3, 9" in proc.stdout
    assert (
        "note:"
        not in run(
            data_root, tmp_path / "long", *SPACE, "epochs=3", "hydra.sweeper.n_trials=1", "hydra.sweeper.pruner=halving"
        ).stdout
    )


@pytest.mark.slow
def test_a_search_packs_its_trials_through_submitit_local(data_root: Path, tmp_path: Path) -> None:
    proc = run(
        data_root,
        tmp_path,
        *SPACE,
        "epochs=2",
        "pack=2",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=4",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 workers for 4 trials, each training up to 2 trials together (pack=2)" in proc.stdout
    assert [t.state for t in study(tmp_path).trials] == [TrialState.COMPLETE] * 4
    assert sorted(p.name for p in (tmp_path / "packs").iterdir()) == ["0-1", "2-3"]
    assert all(json.loads((r.path / "metrics.json").read_text())["status"] == "completed" for r in find_runs(tmp_path))


def halving_decisions(epochs: int) -> list[bool]:
    """Whether Halving(epochs) stops each report of a fixed script of four trials (minimized values)."""
    study = optuna.create_study(pruner=cast(optuna.pruners.BasePruner, Halving(epochs)))  # duck-typed, as a job's
    first, second, third, fourth = (study.ask() for _ in range(4))
    script = [
        (first, 1.0, 1),
        (second, 2.0, 1),
        (third, 0.5, 1),
        (third, 0.4, 3),
        (first, 5.0, 3),
        (fourth, 0.2, 1),
        (fourth, 0.1, 3),
        (third, 0.3, 9),
        (fourth, 0.9, 9),
    ]
    decisions = []
    for trial, value, epoch in script:
        trial.report(value, epoch)
        decisions.append(trial.should_prune())
    return decisions


def test_halving_keeps_the_best_third_at_rungs_up_to_a_third_of_the_run() -> None:
    # a trial goes on if it is in the best third of those at its rung (the first there always is): the second
    # stops at epoch 1, the first at epoch 3 (a rung from 9 epochs on), the fourth at 9 (from 27 epochs on)
    assert halving_decisions(30) == [False, True, False, False, True, False, False, False, True]
    assert halving_decisions(10) == [False, True, False, False, True, False, False, False, False]
    assert halving_decisions(8) == [False, True, False, False, False, False, False, False, False]
    assert halving_decisions(2) == [False] * 9


@pytest.mark.slurm
@needs_cluster
def test_a_search_on_slurm(data_root: Path, tmp_path: Path) -> None:
    proc = run(
        data_root,
        tmp_path,
        *CPU_SLURM,
        *SPACE,
        "epochs=3",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.pruner=halving",
    )
    assert proc.returncode == 0, proc.stderr
    trials = study(tmp_path).trials
    assert len(trials) == 3 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert len(list((tmp_path / ".submitit").glob("*/*_log.out"))) == 2  # a worker job per slot


SETUP_SPACE = ["optimizer.lr=tag(log,interval(1e-5,1e-1))", "reg.l2=tag(log,interval(1e-6,1e-2))"]


def open_study(sweep_dir: Path, seed: int = 0) -> optuna.Study:
    """The study of an fc search over lr and L2, opened as run_search opens it."""
    fixed, searched = space.split(["model=fc", "epochs=4", *SETUP_SPACE])
    return search.open_study(sweep_dir, None, search.setup("valid_loss", fixed, searched, []), seed, "tpe", "none", {})


def ask(study: optuna.Study, n: int) -> list[dict]:
    """Ask `n` trials of the study's space as a worker asks them, telling each a made-up objective."""
    searched = space.split(SETUP_SPACE)[1]
    params = []
    for _ in range(n):
        number = worker.ask(study, searched)
        trial = study.trials[number]
        study.tell(trial.number, trial.params["optimizer.lr"] + trial.params["reg.l2"])
        params.append(trial.params)
    return params


def test_a_continued_search_asks_new_settings_and_a_fresh_one_what_its_seed_says(tmp_path: Path) -> None:
    first = ask(open_study(tmp_path / "a"), 8)
    # the first trial is what TPESampler(seed) asks first
    plain = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    assert first[0] == plain.ask(space.split(SETUP_SPACE)[1]).params
    assert ask(open_study(tmp_path / "c", seed=1), 1) != first[:1]
    continued = ask(open_study(tmp_path / "a"), 4)
    assert all(p not in first for p in continued)
    assert len({tuple(p.values()) for p in first + continued}) == 12
    # deterministic: the same search continued elsewhere asks the same new settings
    ask(open_study(tmp_path / "b"), 8)
    assert ask(open_study(tmp_path / "b"), 4) == continued


def test_a_continuation_of_another_setup_is_refused_before_any_trial(data_root: Path, tmp_path: Path) -> None:
    args = ["model=fc", "epochs=1", *SETUP_SPACE]
    assert run(data_root, tmp_path, *args, "hydra.sweeper.n_trials=1").returncode == 0
    journal = (tmp_path / storage.JOURNAL).read_bytes()
    for other, words in [
        (
            ["model=linear", "data.subset=500", "epochs=2", *SETUP_SPACE],
            "fixed overrides epochs=1 model=fc in the study, data.subset=500 epochs=2 model=linear here",
        ),
        (
            ["model=fc", "epochs=1", "optimizer.lr=interval(1e-5,1e-1)", SETUP_SPACE[1]],
            "optimizer.lr: log interval(1e-05, 0.1) in the study, interval(1e-05, 0.1) here",
        ),
        ([*args, "hydra.sweeper.objective=valid_acc"], "objective=valid_loss in the study, objective=valid_acc here"),
    ]:
        proc = run(data_root, tmp_path, *other, "hydra.sweeper.n_trials=2")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"fmsweep: error: the search in {tmp_path} was started with another setup: ")
        assert proc.stderr.count("\n") == 1 and words in proc.stderr
        assert "(data.root, data.download, device, cuda.bf16, cuda.graph, stack, pack may differ)" in proc.stderr
        assert (tmp_path / storage.JOURNAL).read_bytes() == journal
    # the same setup continues, whatever the machine-only keys say
    proc = run(data_root, tmp_path, *args, "stack=false", "hydra.sweeper.n_trials=2")
    assert proc.returncode == 0, proc.stderr
    assert [t.state for t in study(tmp_path).trials] == [TrialState.COMPLETE] * 2


def default_pruners() -> dict:
    return cast(dict, OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "hydra" / "sweeper" / "optuna.yaml")))


@pytest.mark.parametrize(
    "pruner,settings,attrs",
    [
        ("median", {"startup_trials": 7, "warmup_epochs": 2}, {"_n_startup_trials": 7, "_n_warmup_steps": 3}),
        ("halving", {"min_epochs": 2, "reduction_factor": 4}, {"min_epochs": 2, "reduction_factor": 4, "epochs": 9}),
    ],
)
def test_the_pruner_built_in_a_job_has_the_recorded_settings(
    tmp_path: Path, pruner: str, settings: dict, attrs: dict
) -> None:
    fixed, searched = space.split(["model=fc", *SETUP_SPACE])
    study = search.open_study(
        tmp_path, None, search.setup("valid_loss", fixed, searched, []), 0, "tpe", pruner, settings
    )
    study.ask(searched)
    built = Trial(tmp_path, None, 0, epochs=9).study.pruner
    assert {key: getattr(built, key) for key in attrs} == attrs


@pytest.mark.parametrize(
    "key,value,words",
    [
        ("median.startup_trials", -1, "hydra.sweeper.median.startup_trials must be an integer >= 0, got -1"),
        ("median.warmup_epochs", 0.5, "hydra.sweeper.median.warmup_epochs must be an integer >= 0, got 0.5"),
        ("halving.reduction_factor", 1, "hydra.sweeper.halving.reduction_factor must be an integer >= 2, got 1"),
        ("halving.min_epochs", 0, "hydra.sweeper.halving.min_epochs must be an integer >= 1, got 0"),
    ],
)
def test_a_bad_pruner_setting_is_refused(key: str, value: object, words: str) -> None:
    conf = OmegaConf.create(default_pruners())
    OmegaConf.update(conf, key, value)
    with pytest.raises(search.UserError, match=re.escape(words)):
        search.check_settings(4, 2, "valid_loss", 0, "median", {"median": conf.median, "halving": conf.halving})


def test_a_bad_pruner_setting_is_one_line_before_any_trial(data_root: Path, tmp_path: Path) -> None:
    proc = run(
        data_root, tmp_path / "sweep", *SPACE, "hydra.sweeper.pruner=median", "hydra.sweeper.median.startup_trials=-1"
    )
    assert proc.returncode == 2
    assert proc.stderr == "fmsweep: error: hydra.sweeper.median.startup_trials must be an integer >= 0, got -1\n"
    assert not (tmp_path / "sweep").exists()


def test_by_default_the_median_pruner_waits_for_its_startup_trials() -> None:
    settings = default_pruners()["median"]
    study = optuna.create_study(pruner=make_pruner("median", settings, epochs=4))
    for completed in range(settings["startup_trials"] + 1):
        # a trial far worse than all completed ones: pruned only once startup_trials trials completed, and never
        # within its warm-up epochs
        hopeless = study.ask()
        decisions = []
        for epoch in range(1, 4):
            hopeless.report(100.0, epoch)
            decisions.append(hopeless.should_prune())
        study.tell(hopeless, state=TrialState.FAIL)
        past_warmup = [False] * settings["warmup_epochs"] + [completed >= settings["startup_trials"]] * (
            3 - settings["warmup_epochs"]
        )
        assert decisions == past_warmup, completed
        good = study.ask()
        for epoch in range(1, 5):
            good.report(1.0 / epoch, epoch)
        study.tell(good, 0.25)


def log_span(run_dir: Path) -> tuple[float, float]:
    """When a trial's job started and ended: its job log's first and last timestamps (ms), in seconds."""
    stamps = [
        time.mktime(time.strptime(line[1:20], "%Y-%m-%d %H:%M:%S")) + int(line[21:24]) / 1000
        for line in (run_dir / "__main__.log").read_text().splitlines()
        if line.startswith("[")
    ]
    return stamps[0], stamps[-1]


@pytest.mark.slow
def test_a_slot_asks_its_next_trial_as_soon_as_its_trial_ended(data_root: Path, tmp_path: Path) -> None:
    # the random sampler seeded 17 draws 150 epochs for trial 0 and 2 for trials 1-3 (whichever worker asks them):
    # the slot beside trial 0 runs short trials one after another while trial 0 trains
    proc = run(
        data_root,
        tmp_path,
        "model=fc",
        "epochs=choice(2,150)",
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.seed=17",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
    )
    assert proc.returncode == 0, proc.stderr
    trials = study(tmp_path).trials
    assert [t.params["epochs"] for t in trials] == [150, 2, 2, 2]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    spans = {r.num: log_span(r.path) for r in find_runs(tmp_path)}
    # a short trial started as soon as another one ended, while trial 0, launched beside that one, still trained:
    # a batch-synchronous search would have waited for trial 0
    assert any(
        spans[x][0] < spans[0][1] and spans[x][1] <= spans[z][0] < spans[0][1]
        for x in (1, 2, 3)
        for z in (1, 2, 3)
        if x != z
    ), spans
    workers = json.loads((tmp_path / "sweep.json").read_text())["workers"]
    assert len(workers) == 2


def test_a_continued_search_asks_no_setting_twice(data_root: Path, tmp_path: Path) -> None:
    args = ["model=fc", "epochs=1", *SETUP_SPACE]
    assert run(data_root, tmp_path, *args, "hydra.sweeper.n_trials=3").returncode == 0
    first = [t.params for t in study(tmp_path).trials]
    proc = run(data_root, tmp_path, *args, "hydra.sweeper.n_trials=6")
    assert proc.returncode == 0, proc.stderr
    trials = study(tmp_path).trials
    assert [t.params for t in trials[:3]] == first and [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert len({tuple(t.params.values()) for t in trials}) == 6


def test_a_detached_search_needs_slurm(data_root: Path, tmp_path: Path) -> None:
    proc = run(data_root, tmp_path / "sweep", *SPACE, "hydra.sweeper.detach=true")
    assert proc.returncode == 2
    assert proc.stderr.startswith("fmsweep: error: hydra.sweeper.detach=true needs hydra/launcher=slurm")
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "sweep").exists()
