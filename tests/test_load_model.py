"""`fmsweep.load_model`: a run dir or its best_model.pt gives the model, frozen for prediction; any other path is a
one-line error saying what the path is."""

import shutil
from pathlib import Path

import pytest
import torch

import fmsweep
from fmsweep import models, train
from fmsweep.checkpoint import BEST, LAST
from fmsweep.data import load_fashion_mnist
from fmsweep.errors import UserError


@pytest.fixture
def run_dir(tiny_sweep: Path) -> Path:
    """A finished job of the tiny sweep (the MLP); only read."""
    return next(p for p in sorted(tiny_sweep.iterdir()) if "model=fc" in p.name)


def test_the_best_model_file_itself_gives_the_runs_model(run_dir: Path, data_root: Path) -> None:
    _, _, test_x, _ = load_fashion_mnist(data_root, download=False)
    from_file, from_dir = fmsweep.load_model(run_dir / BEST), fmsweep.load_model(run_dir)
    assert type(from_file.net).__name__ == "FullyConnected" and not from_file.training
    torch.testing.assert_close(from_file(test_x), from_dir(test_x), rtol=0, atol=0)


def test_the_model_predicts_without_an_autograd_graph(run_dir: Path, data_root: Path) -> None:
    _, _, test_x, _ = load_fashion_mnist(data_root, download=False)
    model = fmsweep.load_model(run_dir)
    assert not any(p.requires_grad for p in model.parameters())
    logits = model(test_x)  # no torch.no_grad() around it
    assert not logits.requires_grad and logits.grad_fn is None


def test_floats_outside_0_1_are_refused_in_one_line(run_dir: Path, data_root: Path) -> None:
    """0-255 pixels as floats would be taken for far too bright 0-1 images: refused, not predicted badly."""
    _, _, test_x, _ = load_fashion_mnist(data_root, download=False)
    model = fmsweep.load_model(run_dir)
    torch.testing.assert_close(model(test_x.float() / 255), model(test_x))
    with pytest.raises(UserError) as error:
        model(torch.linspace(0, 255, 28 * 28).reshape(28, 28))
    assert str(error.value) == (
        "the model takes raw images, uint8 in [0, 255] or float in [0, 1]; got torch.float32 "
        "values in [0, 255] (pixels of 0-255 as floats: divide them by 255)"
    )
    with pytest.raises(UserError, match=r"got torch.float64 values in \[-0.5, 0.5\]"):
        model(torch.full((2, 28, 28), 0.5, dtype=torch.float64) - torch.arange(2.0, dtype=torch.float64)[:, None, None])


def test_training_never_checks_the_range(make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is a host sync: training (augmented float batches, normalized by `Classifier.normalize` for the
    network, on CUDA in a captured graph) and its evaluations (uint8 images) must never run it."""
    checked: list[torch.Tensor] = []
    monkeypatch.setattr(models, "check_range", checked.append)
    train.run(make_cfg("aug=flip_affine", "epochs=2"), tmp_path)
    assert checked == []
    fmsweep.load_model(tmp_path)(torch.zeros(28, 28))
    assert len(checked) == 1


def test_a_run_without_a_best_model_yet_says_so(run_dir: Path, tmp_path: Path) -> None:
    unfinished = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (unfinished / BEST).unlink()
    with pytest.raises(UserError) as error:
        fmsweep.load_model(unfinished)
    assert str(error.value) == f"{unfinished} holds no {BEST} yet: the run has not finished an epoch"


def test_another_checkpoint_file_is_refused_as_a_file(run_dir: Path) -> None:
    with pytest.raises(UserError) as error:
        fmsweep.load_model(run_dir / LAST)
    assert str(error.value) == f"{run_dir / LAST} is a file, not a run directory (pass the run directory or its {BEST})"
