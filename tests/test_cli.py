"""The real command line, end to end, in subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, fast_overrides

from fmsweep import checkpoint, train
from fmsweep.config import device_name


def fmsweep(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The command line as a user runs it: without HYDRA_FULL_ERROR, which keeps Hydra's own error reports."""
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, "-m", "fmsweep", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )


def test_single_run_from_the_command_line_trains_what_its_overrides_say(
    make_cfg, data_root: Path, tmp_path: Path
) -> None:
    overrides = ["model=fc", "reg.l2=1e-3", "aug=flip_affine", "seed=3"]
    proc = fmsweep(*fast_overrides(data_root), *overrides, f"hydra.run.dir={tmp_path / 'cli'}")
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1" in proc.stdout
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 1
    assert (
        (tmp_path / "cli" / "summary.txt")
        .read_text()
        .startswith("## Command\npython -m fmsweep " + " ".join([*fast_overrides(data_root), *overrides]))
    )
    # the same overrides composed in Python train bitwise the same model: the CLI passes all of them on
    train.run(make_cfg(*overrides), tmp_path / "api")
    cli, api = (checkpoint.load(tmp_path / d / checkpoint.LAST)["state_dict"] for d in ("cli", "api"))
    assert all(torch.equal(cli[k], api[k]) for k in api)
    train.run(make_cfg(*overrides[:1], *overrides[2:]), tmp_path / "no_l2")  # while each override matters
    no_l2 = checkpoint.load(tmp_path / "no_l2" / checkpoint.LAST)["state_dict"]
    assert not torch.equal(cli["classifier.1.weight"], no_l2["classifier.1.weight"])


@pytest.mark.slow
def test_multirun_makes_one_complete_job_dir_per_combination(data_root: Path, tmp_path: Path) -> None:
    proc = fmsweep("-m", *fast_overrides(data_root), "model=linear,fc", "seed=0,1", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    # <job number>_<overrides>; data.root, data.download and device are left out of the names
    assert [p.name for p in jobs] == [
        f"{i}_batch_size=32,epochs=1,model={m},seed={s}"
        for i, (m, s) in enumerate([("linear", 0), ("linear", 1), ("fc", 0), ("fc", 1)])
    ]
    for job in jobs:
        for name in ("best_model.pt", "last.pt", "metrics.json", "history.csv", "summary.txt"):
            assert (job / name).is_file(), f"{job / name} missing"
        assert list(job.glob("events.out.tfevents.*"))
    # each job trained its own setting: the two seeds of a model differ, and each dir holds its model
    results = [json.loads((job / "metrics.json").read_text()) for job in jobs]
    assert results[0]["valid_loss"] != results[1]["valid_loss"] and results[2]["valid_loss"] != results[3]["valid_loss"]
    assert [type(checkpoint.load_model(job).net).__name__ for job in jobs] == [
        "Linear",
        "Linear",
        "FullyConnected",
        "FullyConnected",
    ]


def test_missing_dataset_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    proc = fmsweep(f"data.root={tmp_path / 'nowhere'}", "data.download=false", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fmsweep: error: ")
    assert "train-images-idx3-ubyte" in lines[0] and "t10k-labels-idx1-ubyte" in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_run_says_where_it_writes_on_which_device_and_where_its_results_are(data_root: Path, tmp_path: Path) -> None:
    proc = fmsweep(*fast_overrides(data_root), f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    [start] = [line for line in proc.stdout.splitlines() if "[INFO] - run dir " in line]
    assert start.endswith(
        f"run dir {tmp_path} | device cpu ({device_name(torch.device('cpu'))}) | "
        f"data {data_root / 'FashionMNIST' / 'raw'}: train 400, valid 100, test 200"
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    [end] = [line for line in proc.stdout.splitlines() if "[INFO] - done: " in line]
    assert end.endswith(
        f"done: best epoch {metrics['best_epoch']} of 1, test accuracy {100 * metrics['test_acc']:.2f} % | "
        f"results in {tmp_path}"
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["seed=range(3)"],
            "seed=range(3) is a sweep, and a sweep needs -m: did you mean `fmsweep -m 'seed=range(3)' ...`?",
        ),
        (
            ["model=fc,linear"],
            "model=fc,linear is a sweep, and a sweep needs -m: did you mean `fmsweep -m model=fc,linear ...`?",
        ),
        (
            ["model=fc,linear", "epochs=3", "model.hidden=512,512"],
            (
                "model=fc,linear and model.hidden=512,512 are sweeps, and sweeps need -m: did you mean "
                "`fmsweep -m model=fc,linear model.hidden=512,512 ...`, or the list model.hidden=[512,512]?"
            ),
        ),
        (
            ["+reg.l2=1e-3"],
            "+reg.l2=1e-3: reg.l2 already exists and + only adds new keys: "
            "did you mean reg.l2=1e-3 (or ++reg.l2=1e-3)?",
        ),
        (
            ["+model=fc"],
            (
                "+model=fc: model already has an option (in the defaults) and + only adds new groups: "
                "did you mean model=fc?"
            ),
        ),
        (["modle=fc"], "modle=fc: unknown config key modle; did you mean model?"),
        (["hydra/sweepr=optuna"], "hydra/sweepr=optuna: unknown config key hydra/sweepr; did you mean hydra/sweeper?"),
        (
            ["hydra.job.chdr=true"],
            "hydra.job.chdr=true: unknown config key hydra.job.chdr; did you mean hydra.job.chdir?",
        ),
        (
            ["-m", "hydra.sweeper.detatch=true", "seed=0,1"],  # the default sweeper: grid
            (
                "hydra.sweeper.detatch=true: unknown config key hydra.sweeper.detatch; "
                "did you mean hydra.sweeper.detach?"
            ),
        ),
        (
            ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trial=5", "optimizer.lr=tag(log,interval(1e-4,1e-1))"],
            "hydra.sweeper.n_trial=5: unknown config key hydra.sweeper.n_trial; did you mean hydra.sweeper.n_trials?",
        ),
        *[
            (
                ["-m", f"hydra/launcher={launcher}", "hydra.launcher.timeout_mins=5", "seed=0,1"],
                (
                    "hydra.launcher.timeout_mins=5: unknown config key hydra.launcher.timeout_mins; "
                    "did you mean hydra.launcher.timeout_min?"
                ),
            )
            for launcher in ("submitit_local", "slurm")
        ],
    ],
)
def test_more_command_line_mistakes_are_one_line_exit_2_and_create_nothing(
    tmp_path: Path, args: list[str], line: str
) -> None:
    """A sweep without -m, a + on what exists, a misspelled group, a misspelled key of the sweeper or launcher in
    effect: Hydra's tracebacks (or a bare 'unknown key') become one line with what was probably meant."""
    proc = fmsweep(*args, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert (proc.returncode, proc.stderr) == (2, f"fmsweep: error: {line}\n")
    assert not any(tmp_path.iterdir())


def console_script() -> str:
    script = Path(sys.executable).parent / "fmsweep"
    assert script.is_file(), "pip install -e . (or the wheel) installs the fmsweep command beside python"
    return str(script)


def test_the_fmsweep_command_works_from_any_folder_and_its_help_says_what_it_is(
    data_root: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    help_text = subprocess.run([console_script(), "--help"], cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0, help_text.stderr
    assert help_text.stdout.startswith("fmsweep: the Fashion-MNIST practical")
    assert "model: fancy_cnn, fc, linear, vanilla_cnn" in help_text.stdout  # the config groups and their options
    assert "epochs (10), batch_size (128)" in help_text.stdout  # main keys with their values from conf/
    run = subprocess.run(
        [console_script(), *fast_overrides(data_root), "model=fc", "hydra.run.dir=run"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((elsewhere / "run" / "metrics.json").read_text())["status"] == "completed"


def test_shell_completion_of_the_fmsweep_command(tmp_path: Path) -> None:
    """What bash asks once `eval "$(fmsweep -sc install=bash)"` has registered the completion (README)."""
    install = subprocess.run([console_script(), "-sc", "install=bash"], capture_output=True, text=True, timeout=60)
    assert (
        install.returncode == 0 and "complete -o nospace -o default -F hydra_bash_completion fmsweep" in install.stdout
    )

    def complete(line: str) -> list[str]:
        env = {**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))}
        proc = subprocess.run(
            [console_script(), "-sc", "query=bash"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert "model=" in complete("fmsweep mod")
    assert {"model=fancy_cnn", "model=fc"} <= set(complete("fmsweep model=f"))
    assert "data.valid_ratio=" in complete("fmsweep data.va")
