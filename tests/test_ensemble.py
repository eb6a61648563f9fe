"""`python -m fmsweep.results.ensemble` on a small sweep: members, their ensemble, selection, skipped runs, refused
splits, errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, make_fashion_root, sweep_jobs
from omegaconf import OmegaConf

import fmsweep
from fmsweep.data import load_fashion_mnist, split_indices
from fmsweep.results import ensemble
from fmsweep.results.runs import find_runs


def jobs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0]))


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def run_ensemble(capsys: pytest.CaptureFixture, *args: str) -> tuple[str, dict]:
    out_file = Path(args[args.index("--out") + 1]) if "--out" in args else None
    ensemble.main([*args, "--device", "cpu"])
    text = capsys.readouterr().out
    return text, json.loads(out_file.read_text()) if out_file else {}


@pytest.fixture(scope="module")
def big_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny data (conftest) with as many test images as an ensemble is scored on at least, and as many valid
    images at the default data.valid_ratio 0.2."""
    n = ensemble.MIN_IMAGES
    return make_fashion_root(tmp_path_factory.mktemp("big"), n_train=5 * n, n_test=n)


@pytest.fixture(scope="module")
def big_sweep(big_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest's tiny_sweep (linear and fc, seeds 0 and 1, 2 epochs) on `big_root`. Do not write into it; tests
    that change it work on a copy."""
    return sweep_jobs(big_root, tmp_path_factory.mktemp("sweep"))


@pytest.fixture
def sweep_copy(big_sweep: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(big_sweep, tmp_path / "sweep"))


def test_test_split_members_and_ensemble_match_a_hand_computed_ensemble(
    sweep_copy: Path, big_root: Path, capsys: pytest.CaptureFixture
) -> None:
    ensemble.main([str(sweep_copy), "--device", "cpu"])
    text = capsys.readouterr().out
    result = json.loads((sweep_copy / "ensemble.json").read_text())  # written into the sweep dir by default

    runs = jobs(sweep_copy)
    assert [m["run"] for m in result["members"]] == [r.name for r in runs]
    assert {m["model"] for m in result["members"]} == {"fmsweep.models.Linear", "fmsweep.models.FullyConnected"}
    for member, run_dir in zip(result["members"], runs):
        assert member["loss"] == pytest.approx(metrics(run_dir)["test_loss"], rel=1e-5)
        assert member["acc"] == pytest.approx(metrics(run_dir)["test_acc"])
        assert member["images"] == 1000

    _, _, test_x, test_y = load_fashion_mnist(big_root, download=False)
    with torch.no_grad():
        probs = torch.stack([fmsweep.load_model(r)(test_x).softmax(1) for r in runs]).mean(0)
    assert result["average"]["images"] == 1000
    assert result["average"]["loss"] == pytest.approx(F.nll_loss(probs.log(), test_y).item(), rel=1e-5)
    assert result["average"]["acc"] == pytest.approx((probs.argmax(1) == test_y).float().mean().item())

    assert result["skipped"] == []
    for r in runs:
        assert r.name in text
    assert "| ensemble of 4 " in text and "average" not in text and "test acc (%)" in text
    assert f"{100 * result['average']['acc']:.2f}" in text


def test_valid_split_of_one_seed_reproduces_each_runs_own_split(
    big_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "valid.json"
    text, result = run_ensemble(capsys, str(big_sweep), "--split", "valid", "--where", "seed=0", "--out", str(out))
    seed_0 = jobs(big_sweep)[::2]
    assert [m["run"] for m in result["members"]] == [r.name for r in seed_0]
    for member, run_dir in zip(result["members"], seed_0):
        assert member["loss"] == pytest.approx(metrics(run_dir)["valid_loss"], rel=1e-5)
        assert member["acc"] == pytest.approx(metrics(run_dir)["valid_acc"])
        assert member["images"] == ensemble.MIN_IMAGES  # the fewest accepted
    assert result["average"]["images"] == ensemble.MIN_IMAGES
    assert "| ensemble of 2 " in text and "chose each member's best epoch" in text


def test_valid_splits_that_differ_are_refused(sweep_copy: Path, big_root: Path) -> None:
    """Seeds 0 and 1 split differently: each member trained on images of the other's valid split, and the images
    held out from both are a few, whatever their number would print as the ensemble's accuracy."""
    train_x, *_ = load_fashion_mnist(big_root, download=False)
    valid = [split_indices(len(train_x), 0.2, None, seed)[1] for seed in (0, 1)]
    shared = int(torch.isin(valid[0], valid[1]).sum())
    (sweep_copy / "ensemble.json").unlink(missing_ok=True)  # the sweep's own, of its best setting
    proc = cli(str(sweep_copy), "--top-k", "3", "--split", "valid", "--device", "cpu")
    assert_one_line_error(
        proc,
        "--split valid: the members' valid splits differ (by seed)",
        f"only {shared} images are held out from all of them",
        "use --split test",
    )
    assert not (sweep_copy / "ensemble.json").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        ([], [f"the test split holds only 200 images, fewer than the {ensemble.MIN_IMAGES}", "--data-root"]),
        (["--split", "valid", "--where", "seed=0"], ["the valid split holds only 100 images", "use --split test"]),
    ],
)
def test_fewer_images_than_the_minimum_are_refused(
    big_sweep: Path, data_root: Path, tmp_path: Path, args: list[str], words: list[str], capsys: pytest.CaptureFixture
) -> None:
    """conftest's data_root: 500 train images (100 valid), 200 test images."""
    out = tmp_path / "e.json"
    with pytest.raises(SystemExit) as exit_info:
        ensemble.main([str(big_sweep), "--data-root", str(data_root), *args, "--device", "cpu", "--out", str(out)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fmsweep: error: ") and all(w in err[0] for w in words), err
    assert captured.out == "" and not out.exists()


def test_selection_by_config_and_top_k(big_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "e.json"

    def members(*args: str) -> list[str]:
        return [m["run"] for m in run_ensemble(capsys, str(big_sweep), *args, "--out", str(out))[1]["members"]]

    names = [r.name for r in jobs(big_sweep)]
    assert members("--where", "model=fc") == names[2:]
    assert members("--where", "model=fc", "--where", "seed=1") == names[3:]
    assert members("--where", "reg.l2=0") == names  # a config value, numbers compared as numbers
    assert members("--where", "optimizer.lr=1e-3", "--where", "data.normalize=pixel") == names
    best_two = sorted(names, key=lambda n: metrics(big_sweep / n)["valid_loss"])[:2]
    assert members("--top-k", "2") == [n for n in names if n in best_two]
    # run dirs given one by one: names relative to their common folder, ensemble.json written there
    ensemble.main([str(big_sweep / names[0]), str(big_sweep / names[2]), "--device", "cpu", "--out", str(out)])
    assert [m["run"] for m in json.loads(out.read_text())["members"]] == [names[0], names[2]]


def test_incomplete_and_unreadable_runs_are_listed_and_skipped(
    sweep_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runs = jobs(sweep_copy)
    (runs[1] / "best_model.pt").unlink()
    (runs[1] / "metrics.json").unlink()
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"format_version": 1, "payload": Payload()}, runs[3] / "best_model.pt")
    notes = sweep_copy / "notes"  # not a run: a folder with a .hydra/ of someone's own
    (notes / ".hydra").mkdir(parents=True)
    (notes / ".hydra" / "config.yaml").write_text("- not\n- a config\n")

    ensemble.main([str(sweep_copy), "--device", "cpu", "--out", str(tmp_path / "e.json")])
    text, err = capsys.readouterr()
    result = json.loads((tmp_path / "e.json").read_text())
    assert err == f"skipped {notes}: invalid .hydra/config.yaml (TypeError: a ListConfig, not a mapping)\n"
    assert not marker.exists()  # loaded with weights_only=True: the pickle's code never ran
    assert [m["run"] for m in result["members"]] == [runs[0].name, runs[2].name]
    skipped = {s["run"]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == {runs[1].name, runs[3].name}
    assert skipped[runs[1].name] == "no best_model.pt (unfinished (2/2 epochs))"
    assert "not a readable fmsweep checkpoint" in skipped[runs[3].name]
    assert f"Skipped {runs[1].name}: no best_model.pt" in text and "| ensemble of 2 " in text


def test_members_list_their_overrides_in_job_dir_order(
    sweep_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Overrides recorded in another order than the dir name's (a command line out of order) are listed as the
    dir name has them."""
    runs = jobs(sweep_copy)
    for run in runs:  # as Hydra records `... seed=0 model=linear epochs=2 batch_size=64 device=cpu ...`
        recorded = OmegaConf.load(run / ".hydra" / "overrides.yaml")
        OmegaConf.save(OmegaConf.create(list(reversed(list(recorded)))), run / ".hydra" / "overrides.yaml")
    _, result = run_ensemble(capsys, str(sweep_copy), "--out", str(tmp_path / "e.json"))
    assert [",".join(m["overrides"]) for m in result["members"]] == [r.name.partition("_")[2] for r in runs]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmsweep.results.ensemble", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fmsweep: error: "), proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert proc.stdout == ""


def test_a_folder_without_runs_is_a_user_error(tmp_path: Path) -> None:
    assert_one_line_error(cli(str(tmp_path)), str(tmp_path), "not an fmsweep sweep or run directory")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--where", "model=vanilla_cnn"], ["no run matches model=vanilla_cnn"]),
        (["--where", "colour=red"], ["colour is neither a config group nor a config key"]),
        (["--top-k", "0"], ["--top-k 0"]),
        (["--split", "train"], ["invalid choice: 'train'"]),
    ],
)
def test_bad_selections_are_user_errors(
    big_sweep: Path, args: list[str], words: list[str], capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ensemble.main([str(big_sweep), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fmsweep: error: ") and all(w in err[0] for w in words), err


def test_no_run_with_a_best_model_is_a_user_error(sweep_copy: Path, capsys: pytest.CaptureFixture) -> None:
    for run in find_runs(sweep_copy):
        (run.path / "best_model.pt").unlink()
    with pytest.raises(SystemExit) as exit_info:
        ensemble.main([str(sweep_copy)])
    assert exit_info.value.code == 2
    assert "none of the 4 selected runs has a usable best_model.pt" in capsys.readouterr().err
