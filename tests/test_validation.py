"""Bad input of every kind ends in one clear UserError (one line and exit 2 on the command line), before
anything is written where possible; checkpoints never run code from the file."""

from __future__ import annotations

import ast
import io
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from conftest import CONF, ROOT, fast_overrides, make_fashion_root, write_idx
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fmsweep import checkpoint, config, data, train
from fmsweep.config import ValidateBeforeRun, validate
from fmsweep.errors import UserError

# (overrides, words the error must contain): each a distinct mistake in a config.
BAD_CONFIGS = [
    (["epochs=0"], "epochs must be an integer >= 1, got 0"),
    (["epochs=-3"], "epochs must be an integer >= 1, got -3"),
    (["epochs=abc"], "epochs must be an integer >= 1, got 'abc'"),
    (["pack=0"], "pack must be an integer >= 1, got 0"),
    (["early_stop.patience=0"], "early_stop.patience must be null or an integer >= 1, got 0"),
    (["early_stop.min_delta=-1"], "early_stop.min_delta must be a number >= 0, got -1"),
    (["scheduler=cosine", "scheduler.final=2"], "scheduler.final must be a number in [0, 1], got 2"),
    (["scheduler=multistep", "scheduler.gamma=0"], "scheduler.gamma must be a number in (0, 1], got 0"),
    (
        ["scheduler=multistep", "scheduler.milestones=[0]"],
        "scheduler.milestones must be a list of integers >= 1, got [0]",
    ),
    (["+scheduler.t_max=3"], "scheduler.t_max is not a setting of Constant"),
    (["+aug.scale=2"], "aug.scale is not a setting of FlipAffine (it takes: degrees, hflip, translate)"),
    (["aug._target_=os.system"], "aug._target_ must name an augmentation of fmsweep.augment, got 'os.system'"),
    (["epochs=1.5"], "epochs must be an integer >= 1, got 1.5"),
    (["epochs=true"], "epochs must be an integer >= 1, got true"),
    (["epochs=null"], "epochs must be an integer >= 1, got null"),
    (["epochs=???"], "config does not resolve: MissingMandatoryValue"),
    (["epochs=${oc.env:FMSWEEP_NO_SUCH_VARIABLE}"], "config does not resolve"),
    (["~epochs"], "epochs is missing from the config"),
    (["batch_size=0"], "batch_size must be an integer >= 1, got 0"),
    (["batch_size=-32"], "batch_size must be an integer >= 1, got -32"),
    (["batch_size=[32]"], "batch_size must be an integer >= 1, got [32]"),
    (["seed=-1"], "seed must be an integer in [0, "),
    (["seed=0.5"], "seed must be an integer in [0, "),
    (["optimizer.lr=0"], "optimizer.lr must be a number > 0, got 0"),
    (["optimizer.lr=-1e-3"], "optimizer.lr must be a number > 0, got -0.001"),
    (["optimizer.lr=fast"], "optimizer.lr must be a number > 0, got 'fast'"),
    (["optimizer.lr=nan"], "optimizer.lr must be a number > 0, got NaN"),
    (["optimizer.lr=inf"], "optimizer.lr must be a number > 0, got Infinity"),
    (["optimizer.weight_decay=-1e-4"], "optimizer.weight_decay must be a number >= 0"),
    (["optimizer=sgd", "optimizer.momentum=1.5"], "optimizer.momentum must be a number in [0, 1), got 1.5"),
    (["optimizer=sgd", "optimizer.nesterov=yes"], "optimizer.nesterov must be true or false, got 'yes'"),
    (["optimizer=sgd", "optimizer.momentum=0"], "Nesterov momentum requires a momentum"),
    (["+optimizer.betas=[2,3]"], "optimizer torch.optim.Adam rejects"),
    (["+optimizer.foo=1"], "optimizer.foo is not a setting of Adam"),
    (["optimizer._target_=os.system"], "optimizer._target_ must name a torch.optim optimizer class, got 'os.system'"),
    (["optimizer._target_=torch.optim.Nope"], "optimizer._target_ must name a torch.optim optimizer class"),
    (["optimizer._partial_=false"], "optimizer._partial_ must be true"),
    (["~optimizer"], "optimizer must be a config group"),
    (["reg.l2=-0.1"], "reg.l2 must be a number >= 0, got -0.1"),
    (["reg.l2=big"], "reg.l2 must be a number >= 0, got 'big'"),
    (["reg.dropout=1"], "reg.dropout must be a number in [0, 1), got 1"),
    (["reg.dropout=-0.1"], "reg.dropout must be a number in [0, 1), got -0.1"),
    (["reg.input_dropout=1.5"], "reg.input_dropout must be a number in [0, 1), got 1.5"),
    (["model=fc", "model.dropout=1.0"], "model.dropout must be a number in [0, 1), got 1.0"),
    (["model=fc", "model.hidden=[0]"], "model.hidden must be a list of integers >= 1, got [0]"),
    (["model=fc", "model.hidden=wide"], "model.hidden must be a list of integers >= 1, got 'wide'"),
    (["model=vanilla_cnn", "model.channels=[8,8,8,8,8]"], "does not fit 28x28 images"),
    (["+model.width=3"], "model.width is not a setting of Linear"),
    (["model._target_=os.system"], "model target 'os.system' is not one of fmsweep.models"),
    (["model._target_=fmsweep.models.Classifier"], "does not build a network"),
    (["~model"], "model must be a config group"),
    (["data.valid_ratio=0"], "data.valid_ratio must be a number in (0, 1), got 0"),
    (["data.valid_ratio=1"], "data.valid_ratio must be a number in (0, 1), got 1"),
    (["data.valid_ratio=-0.2"], "data.valid_ratio must be a number in (0, 1), got -0.2"),
    (["data.valid_ratio=half"], "data.valid_ratio must be a number in (0, 1), got 'half'"),
    (["data.subset=0"], "data.subset must be null or an integer >= 2, got 0"),
    (["data.subset=-5"], "data.subset must be null or an integer >= 2, got -5"),
    (["data.subset=1.5"], "data.subset must be null or an integer >= 2, got 1.5"),
    (["data.normalize=zscore"], "data.normalize must be one of none, pixel, global, got 'zscore'"),
    (["data.download=maybe"], "data.download must be true or false, got 'maybe'"),
    (["data.root="], "data.root must be a non-empty string, got ''"),
    (["~data.root"], "data.root is missing from the config"),
    (["data.root=/nonexistent/fmsweep"], "missing train-images-idx3-ubyte"),
    (["aug.hflip=2"], "aug.hflip must be a number in [0, 1], got 2"),
    (["aug.degrees=-10"], "aug.degrees must be a number in [0, 180], got -10"),
    (["aug.translate=far"], "aug.translate must be a number in [0, 1], got 'far'"),
    (["device=gpu"], "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    (["device=5"], "device must be auto, cpu, cuda or cuda:N, got 5"),
    (["device=cuda:x"], "device must be auto, cpu, cuda or cuda:N, got 'cuda:x'"),
    (["cuda.bf16=1"], "cuda.bf16 must be true or false, got 1"),
    (["cuda.graph=yes"], "cuda.graph must be true or false, got 'yes'"),
    (["stack=yes"], "stack must be auto, true or false, got 'yes'"),
    (["+foo=1"], "unknown config key foo=1"),
    (["+data.shuffle=true"], "unknown config key data.shuffle=true"),
]


def words(overrides: list[str]) -> str:
    return " ".join(overrides)


@pytest.mark.parametrize(("overrides", "message"), BAD_CONFIGS, ids=[words(o) for o, _ in BAD_CONFIGS])
def test_bad_config_is_one_clear_user_error(make_cfg, overrides: list[str], message: str) -> None:
    with pytest.raises(UserError) as err:
        validate(make_cfg(*overrides))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_every_preset_and_option_passes(make_cfg) -> None:
    for group in ("model", "optimizer", "reg", "aug", "experiment"):
        for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
            validate(make_cfg(f"{group}={option}"))


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_refused(make_cfg, monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=f"device={device} asked for, but CUDA is not available"):
        validate(make_cfg(f"device={device}"))


def test_a_cuda_index_the_machine_lacks_is_refused(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"device=cuda:7 asked for, but this machine has 1 CUDA device\(s\)"):
        validate(make_cfg("device=cuda:7"))


def test_train_run_validates_before_writing(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="batch_size must be"):
        train.run(make_cfg("batch_size=0"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_callback_exits_2_with_one_line(make_cfg, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        ValidateBeforeRun().on_run_start(make_cfg("epochs=0"))
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "fmsweep: error: epochs must be an integer >= 1, got 0\n"


# ---------------------------------------------------------------- the command line


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, "-m", "fmsweep", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["epochs=0"], "epochs must be an integer >= 1, got 0"),
        (["device=cuda"], "device=cuda asked for, but CUDA is not available"),
        (["data.root=/nonexistent/fmsweep"], "missing train-images-idx3-ubyte"),
    ],
)
def test_rejected_run_is_one_line_exit_2_and_leaves_no_run_dir(
    data_root: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    run_dir = tmp_path / "run"
    proc = cli(*fast_overrides(data_root), *args, f"hydra.run.dir={run_dir}", env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith("fmsweep: error: ") and message in line
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["model=resnet9000"],
            "model=resnet9000: no such option of model (its options: fancy_cnn, fc, linear, vanilla_cnn)",
        ),
        (
            ["model=fcc"],
            "model=fcc: no such option of model (its options: fancy_cnn, fc, linear, vanilla_cnn); did you mean fc?",
        ),
        (
            ["optimizer=adan"],
            "optimizer=adan: no such option of optimizer (its options: adam, adamw, sgd); did you mean adam?",
        ),
        (["model=null"], "model=null: model takes one of its options (fancy_cnn, fc, linear, vanilla_cnn), not null"),
        (
            ["foo=1"],
            "foo=1: unknown config key foo (known keys there: aug, batch_size, cuda, data, device, early_stop, "
            "epochs, model, optimizer, pack, reg, scheduler, seed, stack)",
        ),
        (["epoch=3"], "epoch=3: unknown config key epoch; did you mean epochs?"),
        (["data.rot=/tmp"], "data.rot=/tmp: unknown config key data.rot; did you mean data.root?"),
        (["lrr=0.1"], "lrr=0.1: unknown config key lrr; did you mean optimizer.lr?"),
        (["reg.l3=1"], "reg.l3=1: unknown config key reg.l3 (known keys there: dropout, input_dropout, l2)"),
        (["epochs=[1,"], "cannot parse the override 'epochs=[1,': no viable alternative at input '[1,'"),
    ],
)
def test_hydra_errors_are_one_line_exit_2_with_a_suggestion(tmp_path: Path, args: list[str], line: str) -> None:
    run_dir = tmp_path / "run"
    proc = cli(*args, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2
    assert proc.stderr == f"fmsweep: error: {line}\n"
    assert not run_dir.exists()


def test_hydra_full_error_set_by_the_user_keeps_hydras_own_report(tmp_path: Path) -> None:
    proc = cli("model=resnet9000", f"hydra.run.dir={tmp_path / 'run'}", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "MissingConfigException" in proc.stderr


def test_a_bad_job_in_the_middle_of_a_sweep_stops_it_before_anything_is_launched(
    data_root: Path, tmp_path: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = cli("-m", *fast_overrides(data_root), "reg.l2=0,-1,0.1", f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 2
    assert proc.stderr == (
        "fmsweep: error: job 1_batch_size=32,epochs=1,reg.l2=-1: reg.l2 must be a number >= 0, "
        "got -1; nothing was launched\n"
    )  # the job as its dir would be named
    assert not sweep_dir.exists()  # no job dir, not even the sweep dir


def test_an_unknown_key_in_a_sweep_value_is_one_line_too(data_root: Path, tmp_path: Path) -> None:
    proc = cli("-m", *fast_overrides(data_root), "model=fc,fcc", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 2
    assert proc.stderr.startswith("fmsweep: error: model=fcc: no such option of model") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "sweep").exists()


def test_the_first_run_without_internet_says_why_and_what_to_do_and_leaves_nothing(tmp_path: Path) -> None:
    """data.download=true (the default) on a machine whose download fails (here: every download, by construction)."""
    root, run_dir = tmp_path / "Datasets", tmp_path / "run"
    proc = cli(f"data.root={root}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("fmsweep: error: ")]
    assert f"missing {', '.join(data.RAW_FILES)} in {root / 'FashionMNIST' / 'raw'}" in line
    assert "Connection refused" in line  # the real cause, as urllib tells it
    assert "data.download=false" in line and "data.root=" in line
    assert all(line.count(name) == 1 for name in data.RAW_FILES)
    assert not root.exists() and not run_dir.exists()


# ---------------------------------------------------------------- data files


def truncate(name: str, keep: int) -> Callable[[Path], None]:
    def corrupt(raw: Path) -> None:
        (raw / name).write_bytes((raw / name).read_bytes()[:keep])

    return corrupt


def overwrite(name: str, content: bytes) -> Callable[[Path], None]:
    def corrupt(raw: Path) -> None:
        (raw / name).write_bytes(content)

    return corrupt


def rewrite(name: str, array: np.ndarray) -> Callable[[Path], None]:
    def corrupt(raw: Path) -> None:
        write_idx(raw / name, array)

    return corrupt


def replace_with_folder(name: str) -> Callable[[Path], None]:
    def corrupt(raw: Path) -> None:
        (raw / name).unlink()
        (raw / name).mkdir()

    return corrupt


def garble_header(raw: Path) -> None:
    content = bytearray((raw / "train-images-idx3-ubyte").read_bytes())
    content[:16] = np.random.default_rng(0).integers(0, 256, 16, dtype=np.uint8).tobytes()
    (raw / "train-images-idx3-ubyte").write_bytes(bytes(content))


def idx_header(type_code: int, *shape: int) -> bytes:
    return bytes([0, 0, type_code, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)


DATA_CORRUPTIONS = {
    "labels file missing": (lambda raw: (raw / "t10k-labels-idx1-ubyte").unlink(), "missing t10k-labels-idx1-ubyte"),
    "labels file is a folder": (replace_with_folder("train-labels-idx1-ubyte"), "missing train-labels-idx1-ubyte"),
    "images truncated mid-image": (truncate("train-images-idx3-ubyte", 16 + 50 * 784 - 100), "unreadable IDX files"),
    "labels truncated": (truncate("t10k-labels-idx1-ubyte", 8 + 5), "unreadable IDX files"),
    "header truncated": (truncate("train-images-idx3-ubyte", 6), "unreadable IDX files"),
    "empty file": (overwrite("t10k-images-idx3-ubyte", b""), "unreadable IDX files"),
    "garbled header": (garble_header, "unreadable IDX files"),
    "text instead of IDX": (
        overwrite("train-labels-idx1-ubyte", b"<html>404 Not Found</html>\n"),
        "unreadable IDX files",
    ),
    "unknown IDX type code": (
        overwrite("train-images-idx3-ubyte", idx_header(0x0A, 1, 28, 28) + bytes(784)),
        "unreadable IDX files",
    ),
    "float IDX": (
        overwrite("train-images-idx3-ubyte", idx_header(0x0D, 1, 28, 28) + bytes(4 * 784)),
        "unreadable IDX files",
    ),
    "images where labels belong": (rewrite("train-labels-idx1-ubyte", np.zeros((50, 28, 28))), "unreadable IDX files"),
    "images of 32x32": (
        rewrite("t10k-images-idx3-ubyte", np.zeros((20, 32, 32))),
        "holds images of shape (20, 32, 32)",
    ),
    "no images": (rewrite("train-images-idx3-ubyte", np.zeros((0, 28, 28))), "holds no images"),
    "fewer labels than images": (rewrite("train-labels-idx1-ubyte", np.zeros(49)), "holds 49 labels for 50 images"),
    "label out of range": (rewrite("t10k-labels-idx1-ubyte", np.full(20, 12)), "labels outside 0-9"),
}


@pytest.mark.parametrize(("corrupt", "message"), DATA_CORRUPTIONS.values(), ids=DATA_CORRUPTIONS.keys())
def test_bad_data_files_are_a_user_error(tmp_path: Path, corrupt: Callable[[Path], None], message: str) -> None:
    root = make_fashion_root(tmp_path, n_train=50, n_test=20)
    corrupt(root / "FashionMNIST" / "raw")
    for download in (False, True):  # present files are never downloaded again, even when broken; missing ones
        with pytest.raises(UserError) as err:  # are, but every download fails here (conftest: mirrors unreachable)
            data.load_fashion_mnist(root, download=download)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_a_split_left_empty_is_a_user_error() -> None:
    with pytest.raises(UserError, match="splits 2 images into 2 train and 0 valid images"):
        data.split_indices(500, 0.2, 2, seed=0)


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def runs(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished 1-epoch run of the linear model and one of the MLP."""
    out = {}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for model in ("linear", "fc"):
            out[model] = tmp_path_factory.mktemp(model)
            train.run(compose("config", overrides=[*fast_overrides(data_root), f"model={model}"]), out[model])
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_a_folder_that_is_not_a_run_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    for path, message in [
        (tmp_path, "is not an fmsweep run directory"),
        (tmp_path / "nowhere", "no such file or directory"),
        (runs["linear"] / "metrics.json", "is a file, not a run directory"),
        (
            runs["linear"].parent,
            r"is a sweep directory, not a run directory: its best run on "
            r"validation is fmsweep.load_sweep\(.*\).best\(\)",
        ),
    ]:  # a folder of runs
        with pytest.raises(UserError, match=message) as error:
            checkpoint.load_model(path)
        assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[: len(b) // 2], "is not a readable fmsweep checkpoint"),
        (lambda b: b[:100], "is not a readable fmsweep checkpoint"),
        (lambda b: b"", "is not a readable fmsweep checkpoint"),
        (lambda b: bytes(x ^ 0x5A for x in b), "is not a readable fmsweep checkpoint"),
    ],
    ids=["half", "first 100 bytes", "empty", "garbled"],
)
def test_a_damaged_checkpoint_is_refused(runs: dict[str, Path], tmp_path: Path, damage, message: str) -> None:
    run = copy_run(runs["linear"], tmp_path)
    (run / checkpoint.BEST).write_bytes(damage((run / checkpoint.BEST).read_bytes()))
    with pytest.raises(UserError, match=message):
        checkpoint.load_model(run)


def test_weights_of_another_architecture_are_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    run = copy_run(runs["linear"], tmp_path)
    state = checkpoint.load(runs["fc"] / checkpoint.BEST)
    state["model_config"] = checkpoint.load(run / checkpoint.BEST)["model_config"]
    checkpoint.save(state, run / checkpoint.BEST)
    with pytest.raises(UserError, match="weights do not fit its model config"):
        checkpoint.load_model(run)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("normalization"), "is not a best-model checkpoint"),
        (lambda s: s.update(model_config="fc"), "is not a best-model checkpoint"),
        (lambda s: s.update(model_config={"_target_": "os.system", "command": "true"}), "is not one of fmsweep.models"),
        (lambda s: s.update(format_version=99), "is not an fmsweep checkpoint of format 1"),
    ],
    ids=["no normalization", "config not a dict", "foreign target", "other format"],
)
def test_a_checkpoint_with_wrong_contents_is_refused(runs: dict[str, Path], tmp_path: Path, edit, message: str) -> None:
    run = copy_run(runs["linear"], tmp_path)
    state = torch.load(run / checkpoint.BEST, weights_only=True)
    edit(state)
    torch.save(state, run / checkpoint.BEST)
    with pytest.raises(UserError, match=message):
        checkpoint.load_model(run)


def test_a_callable_named_in_a_checkpoints_model_config_is_never_called(runs: dict[str, Path], tmp_path: Path) -> None:
    """weights_only=True keeps code out of the unpickling; the model config must not smuggle it in through
    Hydra's recursive instantiate either (builtins.open is not on Hydra's blocklist: it would create the file)."""
    run = copy_run(runs["fc"], tmp_path)
    marker = tmp_path / "marker"
    state = torch.load(run / checkpoint.BEST, weights_only=True)
    state["model_config"]["hidden"] = {"_target_": "builtins.open", "_args_": [str(marker), "w"]}
    torch.save(state, run / checkpoint.BEST)
    with pytest.raises(UserError, match="does not build a network"):
        checkpoint.load_model(run)
    assert not marker.exists()


def test_last_checkpoint_renamed_as_best_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    run = copy_run(runs["fc"], tmp_path)
    shutil.copy(run / checkpoint.LAST, run / checkpoint.BEST)
    with pytest.raises(UserError, match="is not a best-model checkpoint"):
        checkpoint.load_model(run)


def test_resuming_a_run_of_another_architecture_is_refused(make_cfg, runs: dict[str, Path], tmp_path: Path) -> None:
    run = copy_run(runs["linear"], tmp_path)
    shutil.copy(runs["fc"] / checkpoint.LAST, run / checkpoint.LAST)
    with pytest.raises(UserError, match="holds a run of another model"):
        train.run(make_cfg("model=linear", "epochs=2"), run)


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def torch_file(payload: Payload) -> bytes:
    path = payload.marker.with_suffix(".pt")
    torch.save({"format_version": checkpoint.FORMAT_VERSION, "model_config": payload}, path)
    return path.read_bytes()


def unsafe_torch_load(content: bytes) -> object:
    return torch.load(io.BytesIO(content), weights_only=False)


MALICIOUS = {
    "pickle": (lambda p: pickle.dumps(p, protocol=2), pickle.loads),
    "torch zip": (torch_file, unsafe_torch_load),
}


@pytest.mark.parametrize(("make", "unsafe_load"), MALICIOUS.values(), ids=MALICIOUS.keys())
def test_the_payload_runs_when_loaded_unsafely(tmp_path: Path, make, unsafe_load) -> None:
    """The control: these files do run code when read with pickle or torch.load(weights_only=False)."""
    unsafe_load(make(Payload(tmp_path / "marker")))
    assert (tmp_path / "marker").exists()


@pytest.mark.parametrize("make", [make for make, _ in MALICIOUS.values()], ids=MALICIOUS.keys())
@pytest.mark.parametrize("name", [checkpoint.BEST, checkpoint.LAST])
def test_a_checkpoint_crafted_to_run_code_is_refused_and_never_runs(
    make_cfg, runs: dict[str, Path], tmp_path: Path, make, name: str
) -> None:
    run = copy_run(runs["linear"], tmp_path)
    marker = tmp_path / "marker"
    (run / name).write_bytes(make(Payload(marker)))
    with pytest.raises(UserError, match="is not a readable fmsweep checkpoint"):
        if name == checkpoint.BEST:
            checkpoint.load_model(run)
        else:
            train.run(make_cfg("epochs=2"), run)  # a resume reads last.pt
    assert not marker.exists()


def test_every_torch_load_in_the_package_is_weights_only() -> None:
    calls = [
        (source, node)
        for source in [*(ROOT / "fmsweep").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "pickle.load", "pickle.loads")
    ]
    assert calls, "checkpoint.load reads with torch.load"
    for source, node in calls:
        if source == ROOT / "fmsweep/sweep/feed.py" and ast.unparse(node.func) == "pickle.loads":
            continue  # the launcher jobs the launch itself kept in DIR/.waiting: as trusted as submitit's job pickles
        flag = {k.arg: k.value for k in node.keywords}.get("weights_only")
        assert ast.unparse(node.func) == "torch.load" and isinstance(flag, ast.Constant) and flag.value is True, (
            f"{source}:{node.lineno}: {ast.unparse(node)}"
        )


# ---------------------------------------------------------------- random overrides

KEYS = [*config.RUN_KEYS, *config.ARGUMENTS, "model._target_", "optimizer._target_", "optimizer._partial_"]
GROUPS = {
    group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    for group in ("model", "optimizer", "reg", "aug", "experiment")
}
VALUES = st.one_of(
    st.integers(-3, 300).map(str),
    st.integers().map(str),
    st.floats(-2, 2).map(repr),
    st.floats().map(repr),  # nan, inf, 1e+300, ...
    st.sampled_from(
        [
            "null",
            "true",
            "false",
            "''",
            "auto",
            "cpu",
            "cuda",
            "cuda:1",
            "pixel",
            "none",
            "global",
            "fmsweep.models.FancyCNN",
            "torch.optim.SGD",
            "${reg.dropout}",
            "${nope}",
            "???",
            "/tmp",
            "{}",
        ]
    ),
    st.lists(st.integers(-2, 40).map(str), max_size=4).map(lambda v: f"[{','.join(v)}]"),
    st.text(alphabet="abc01.-_:$ {}[],=~+'\"\\", max_size=8),  # mostly override syntax errors
)
KNOWN_KEY = st.sampled_from(KEYS).flatmap(
    lambda key: st.one_of(
        VALUES.map(lambda value: f"{key}={value}"), VALUES.map(lambda value: f"++{key}={value}"), st.just(f"~{key}")
    )
)
JUNK_KEY = st.from_regex(r"[a-z_]{1,6}(\.[a-z_]{1,6})?", fullmatch=True).flatmap(
    lambda key: VALUES.map(lambda value: f"+{key}={value}")
)
GROUP_OPTION = st.sampled_from(sorted(GROUPS)).flatmap(
    lambda group: st.sampled_from([*GROUPS[group], "resnet9000"]).map(lambda option: f"{group}={option}")
)
OVERRIDES = st.lists(st.one_of(KNOWN_KEY, KNOWN_KEY, KNOWN_KEY, JUNK_KEY, GROUP_OPTION), min_size=1, max_size=4)


def test_random_overrides_give_a_clean_error_or_a_working_config(data_root: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):

        @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(OVERRIDES)
        def check(extra: list[str]) -> None:
            try:
                cfg = compose("config", overrides=[*fast_overrides(data_root), *extra])
            except (HydraException, OmegaConfBaseException):
                return  # Hydra's own compact error: unknown option or key, override syntax
            try:
                validate(cfg)
            except UserError as exc:
                assert "\n" not in str(exc)
                return
            # passed: the parts of a run work with it
            run = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
            net = checkpoint.build_network(run["model"])
            assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
            instantiate(cfg.optimizer)(net.parameters())
            aug = instantiate(cfg.aug)
            images = aug.apply(torch.rand(4, 1, 28, 28), aug.draw(4, torch.Generator()))
            assert images.shape == (4, 1, 28, 28) and torch.isfinite(images).all()

        check()
