"""`fmsweep.load_model`: a run dir or its best_model.pt gives the model, frozen for prediction; any other path is a
one-line error saying what the path is."""
import shutil
from pathlib import Path

import pytest
import torch

import fmsweep
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
