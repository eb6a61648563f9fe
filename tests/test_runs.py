"""find_runs, which the report and the ensemble read a sweep with: a dir with a .hydra/config.yaml that is not a
complete fmsweep run is skipped with one line on stderr, the rest is read; nothing left is a UserError."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from fmsweep.errors import UserError
from fmsweep.results.runs import find_runs

LACKS_ALL = (
    "lacks the number(s) best_epoch, valid_loss, valid_acc, test_loss, test_acc, num_params, train_seconds, epochs_run"
)


def jobs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0]))


@pytest.fixture
def sweep_copy(tiny_sweep: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_sweep, tmp_path / "sweep"))


def finished(**changes: object) -> str:
    """The metrics.json of a finished run, with `changes`."""
    metrics = {
        "status": "completed",
        "best_epoch": 2,
        "valid_loss": 0.5,
        "valid_acc": 0.8,
        "test_loss": 0.5,
        "test_acc": 0.8,
        "num_params": 7850,
        "train_seconds": 1.5,
        "epochs_run": 2,
        "stopped_early": None,
        "pruned": None,
    }
    return json.dumps({**metrics, **changes})


@pytest.mark.parametrize(
    "file, content, reason",
    [
        ("metrics.json", "{not json", "metrics.json is not JSON (JSONDecodeError: "),
        ("metrics.json", b"\xff\xfe{}", "metrics.json is not JSON (UnicodeDecodeError: "),
        ("metrics.json", "[1, 2]", "metrics.json holds no status completed/pruned/failed"),
        ("metrics.json", '{"valid_loss": 0.5}', "metrics.json holds no status completed/pruned/failed"),
        ("metrics.json", finished(status="done"), "metrics.json holds no status completed/pruned/failed"),
        ("metrics.json", '{"status": "completed"}', f"metrics.json of a completed run {LACKS_ALL}"),
        (
            "metrics.json",
            finished(status="pruned", valid_loss="0.5", epochs_run=True),
            "metrics.json of a pruned run lacks the number(s) valid_loss, epochs_run",
        ),
        (".hydra/config.yaml", "model: [", "invalid .hydra/config.yaml (ParserError: "),
        (".hydra/config.yaml", "- a\n- list\n", "invalid .hydra/config.yaml (TypeError: a ListConfig, not a mapping)"),
        (
            ".hydra/config.yaml",
            "epochs: 2\nmodel: {}\n",
            (
                ".hydra/config.yaml is not an fmsweep run's: it lacks seed, "
                "model._target_, data.root, data.download, data.valid_ratio, data.subset"
            ),
        ),
        (".hydra/hydra.yaml", "hydra: {job: {num: first}}", "invalid .hydra/hydra.yaml (ValueError: "),
        (".hydra/hydra.yaml", "hydra: {runtime: {choices: fc}}", "invalid .hydra/hydra.yaml (TypeError: a str, not"),
        (".hydra/hydra.yaml", b"\xff\xfe", "invalid .hydra/hydra.yaml (UnicodeDecodeError: "),
        (".hydra/overrides.yaml", "- [", "invalid .hydra/overrides.yaml (ParserError: "),
    ],
)
def test_a_dir_that_is_not_a_complete_run_is_skipped_with_one_line(
    sweep_copy: Path, file: str, content: str | bytes, reason: str, capsys: pytest.CaptureFixture
) -> None:
    dirs = jobs(sweep_copy)
    path = dirs[1] / file
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert [run.path for run in find_runs(sweep_copy)] == [dirs[0], dirs[2], dirs[3]]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"skipped {dirs[1]}: {reason}"), err


def test_unfinished_failed_and_pruned_runs_are_runs(sweep_copy: Path, capsys: pytest.CaptureFixture) -> None:
    """What fmsweep itself leaves is never skipped: no metrics.json yet (still training, or killed), a failure's
    status and error, a pruned trial's metrics."""
    dirs = jobs(sweep_copy)
    (dirs[1] / "metrics.json").unlink()
    (dirs[2] / "metrics.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom"}))
    (dirs[3] / "metrics.json").write_text(finished(status="pruned", pruned=1))
    runs = find_runs(sweep_copy)
    assert [run.status for run in runs] == ["completed", "unfinished (2/2 epochs)", "failed", "pruned at epoch 1"]
    assert capsys.readouterr().err == ""


def report(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmsweep.results.report", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_report_skips_a_hand_written_dir_and_reports_the_rest(tiny_sweep: Path, tmp_path: Path) -> None:
    """A folder with a run and a dir of someone's own (a .hydra/config.yaml, a hand-written metrics.json): the
    report used to end in KeyError: 'valid_loss'. With no run left it is a one-line error, exit 2."""
    run = Path(shutil.copytree(jobs(tiny_sweep)[0], tmp_path / "run"))
    notes = tmp_path / "notes"
    shutil.copytree(run / ".hydra", notes / ".hydra")
    (notes / "metrics.json").write_text('{"status": "completed", "test_acc": 0.9}')
    skipped = f"skipped {notes}: metrics.json of a completed run {LACKS_ALL.replace('test_acc, ', '')}"

    proc = report(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [skipped]
    assert "| completed " in proc.stdout and "notes" not in proc.stdout

    shutil.rmtree(run)
    proc = report(tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    error = (
        f"fmsweep: error: {tmp_path} is not an fmsweep sweep or run directory: none of the 1 dir(s) with a "
        ".hydra/config.yaml in it or below is a complete run (skipped, see above)"
    )
    assert proc.stderr.splitlines() == [skipped, error]


def test_a_run_dir_that_is_not_a_complete_run_is_a_user_error(
    tiny_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = Path(shutil.copytree(jobs(tiny_sweep)[0], tmp_path / "run"))
    (run / "metrics.json").write_text("")
    with pytest.raises(UserError, match="none of the 1 dir"):
        find_runs(run)
    assert capsys.readouterr().err.startswith(f"skipped {run}: metrics.json is not JSON")
