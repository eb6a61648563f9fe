"""`python -m fmsweep.ensemble` on the tiny sweep: members, the averaged model, selection, skipped runs, errors."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import fmsweep
from conftest import ROOT
from fmsweep import ensemble
from fmsweep.data import load_fashion_mnist, split_indices
from fmsweep.runs import find_runs


def jobs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0]))


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def run_ensemble(capsys: pytest.CaptureFixture, *args: str) -> tuple[str, dict]:
    out_file = Path(args[args.index("--out") + 1]) if "--out" in args else None
    ensemble.main([*args, "--device", "cpu"])
    text = capsys.readouterr().out
    return text, json.loads(out_file.read_text()) if out_file else {}


@pytest.fixture
def sweep_copy(tiny_sweep: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_sweep, tmp_path / "sweep"))


def test_test_split_members_and_average_match_a_hand_computed_ensemble(sweep_copy: Path, data_root: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    ensemble.main([str(sweep_copy), "--device", "cpu"])
    text = capsys.readouterr().out
    result = json.loads((sweep_copy / "ensemble.json").read_text())  # written into the sweep dir by default

    runs = jobs(sweep_copy)
    assert [m["run"] for m in result["members"]] == [r.name for r in runs]
    assert {m["model"] for m in result["members"]} == {"fmsweep.models.Linear", "fmsweep.models.FullyConnected"}
    for member, run_dir in zip(result["members"], runs):
        assert member["loss"] == pytest.approx(metrics(run_dir)["test_loss"], rel=1e-5)
        assert member["acc"] == pytest.approx(metrics(run_dir)["test_acc"])
        assert member["images"] == 200

    _, _, test_x, test_y = load_fashion_mnist(data_root, download=False)
    with torch.no_grad():
        probs = torch.stack([fmsweep.load_model(r)(test_x).softmax(1) for r in runs]).mean(0)
    assert result["average"]["images"] == 200
    assert result["average"]["loss"] == pytest.approx(F.nll_loss(probs.log(), test_y).item(), rel=1e-5)
    assert result["average"]["acc"] == pytest.approx((probs.argmax(1) == test_y).float().mean().item())

    assert result["skipped"] == []
    for r in runs:
        assert r.name in text
    assert "average of 4" in text and "test acc (%)" in text
    assert f"{100 * result['average']['acc']:.2f}" in text


def test_valid_split_reproduces_each_runs_own_split(tiny_sweep: Path, data_root: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "valid.json"
    text, result = run_ensemble(capsys, str(tiny_sweep), "--split", "valid", "--out", str(out))
    for member, run_dir in zip(result["members"], jobs(tiny_sweep)):
        assert member["loss"] == pytest.approx(metrics(run_dir)["valid_loss"], rel=1e-5)
        assert member["acc"] == pytest.approx(metrics(run_dir)["valid_acc"])
    # seeds 0 and 1 split differently: the average is taken on the images no member trained on
    train_x, *_ = load_fashion_mnist(data_root, download=False)
    valid = [split_indices(len(train_x), 0.2, None, seed)[1] for seed in (0, 1)]
    assert result["average"]["images"] == int(torch.isin(valid[0], valid[1]).sum()) > 0
    assert "held out from every member" in text

    _, same_seed = run_ensemble(capsys, str(tiny_sweep), "--split", "valid", "--where", "seed=0", "--out", str(out))
    assert [m["images"] for m in same_seed["members"]] == [100, 100]
    assert same_seed["average"]["images"] == 100


def test_selection_by_config_and_top_k(tiny_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "e.json"

    def members(*args: str) -> list[str]:
        return [m["run"] for m in run_ensemble(capsys, str(tiny_sweep), *args, "--out", str(out))[1]["members"]]

    names = [r.name for r in jobs(tiny_sweep)]
    assert members("--where", "model=fc") == names[2:]
    assert members("--where", "model=fc", "--where", "seed=1") == names[3:]
    assert members("--where", "reg.l2=0") == names  # a config value, numbers compared as numbers
    assert members("--where", "optimizer.lr=1e-3", "--where", "data.normalize=pixel") == names
    best_two = sorted(names, key=lambda n: metrics(tiny_sweep / n)["valid_loss"])[:2]
    assert members("--top-k", "2") == [n for n in names if n in best_two]
    # run dirs given one by one: names relative to their common folder, ensemble.json written there
    ensemble.main([str(tiny_sweep / names[0]), str(tiny_sweep / names[2]), "--device", "cpu", "--out", str(out)])
    assert [m["run"] for m in json.loads(out.read_text())["members"]] == [names[0], names[2]]


def test_incomplete_and_unreadable_runs_are_listed_and_skipped(sweep_copy: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    runs = jobs(sweep_copy)
    (runs[1] / "best_model.pt").unlink()
    (runs[1] / "metrics.json").unlink()
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"format_version": 1, "payload": Payload()}, runs[3] / "best_model.pt")

    text, result = run_ensemble(capsys, str(sweep_copy), "--out", str(tmp_path / "e.json"))
    assert not marker.exists()  # loaded with weights_only=True: the pickle's code never ran
    assert [m["run"] for m in result["members"]] == [runs[0].name, runs[2].name]
    skipped = {s["run"]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == {runs[1].name, runs[3].name}
    assert "no best_model.pt (unfinished (2/2 epochs))" == skipped[runs[1].name]
    assert "not a readable fmsweep checkpoint" in skipped[runs[3].name]
    assert f"Skipped {runs[1].name}: no best_model.pt" in text and "average of 2" in text


def test_members_list_their_overrides_in_job_dir_order(sweep_copy: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """Overrides recorded in another order than the dir name's (a command line out of order) are listed as the
    dir name has them."""
    runs = jobs(sweep_copy)
    for run in runs:  # as Hydra records `... seed=0 model=linear epochs=2 batch_size=64 device=cpu ...`
        recorded = OmegaConf.load(run / ".hydra" / "overrides.yaml")
        OmegaConf.save(OmegaConf.create(list(reversed(list(recorded)))), run / ".hydra" / "overrides.yaml")
    _, result = run_ensemble(capsys, str(sweep_copy), "--out", str(tmp_path / "e.json"))
    assert [",".join(m["overrides"]) for m in result["members"]] == [r.name.partition("_")[2] for r in runs]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmsweep.ensemble", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


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
def test_bad_selections_are_user_errors(tiny_sweep: Path, args: list[str], words: list[str],
                                        capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ensemble.main([str(tiny_sweep), *args])
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
