"""The one command `fmsweep`: its subcommands (status, resume, cancel, report, ensemble), the shell completion of
them, Hydra's command line behind it, and what `fmsweep resume` and `fmsweep cancel` do to a sweep."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from hydra.core.override_parser.overrides_parser import OverridesParser
from test_slurm import needs_cluster

import fmsweep.__main__
from fmsweep.sweep import cancel, manifest, resume
from fmsweep.sweep.manifest import JobRecord, Manifest

BIN = Path(sys.executable).parent
TOOLS = ["status", "resume", "cancel", "report", "ensemble"]


def fmsweep_cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`fmsweep ARGS` as the console script runs it (fmsweep.cli), without HYDRA_FULL_ERROR."""
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "fmsweep.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


def query(line: str, cwd: Path = ROOT, shell: str = "bash") -> list[str]:
    """The completions of `line` (the cursor at its end) as Hydra's shell function asks for them."""
    proc = fmsweep_cli("-sc", f"query={shell}", cwd=cwd, env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def make_sweep(
    sweep_dir: Path,
    launcher: str,
    launcher_jobs: list[str | None],
    completed: tuple[int, ...] = (),
    command: list[str] | None = None,
    cwd: Path = ROOT,
) -> Manifest:
    """A sweep.json with one job per launcher job id, and its job dirs; the jobs in `completed` hold a completed
    metrics.json."""
    jobs = [
        JobRecord(num=i, name=f"{i}_seed={i}", overrides=[f"seed={i}"], epochs=2, launcher_job=job)
        for i, job in enumerate(launcher_jobs)
    ]
    for job in jobs:
        (sweep_dir / job.name).mkdir(parents=True)
        if job.num in completed:
            (sweep_dir / job.name / "metrics.json").write_text(json.dumps({"status": "completed"}))
    sweep = Manifest(
        sweep_dir=sweep_dir,
        kind="grid",
        launcher=launcher,
        cwd=str(cwd),
        jobs=jobs,
        command=command or ["-m", f"seed={','.join(str(i) for i in range(len(jobs)))}"],
    )
    sweep.save()
    return sweep


@pytest.mark.parametrize("tool", TOOLS)
def test_each_tool_is_a_subcommand_with_its_own_help(tool: str) -> None:
    proc = fmsweep_cli(tool, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: fmsweep {tool} ")


@pytest.mark.parametrize("tool", ["resume", "cancel"])
def test_resume_and_cancel_of_a_dir_without_sweep_json_are_one_line_and_exit_2(tool: str, tmp_path: Path) -> None:
    proc = fmsweep_cli(tool, str(tmp_path))
    assert proc.returncode == 2
    assert (
        proc.stderr == f"fmsweep: error: {tmp_path} holds no sweep.json: not an fmsweep sweep dir (or one made "
        f"before sweeps were recorded)\n"
    )
    assert proc.stdout == ""


def test_a_bad_tool_command_line_is_one_line_and_exit_2() -> None:
    proc = fmsweep_cli("cancel")
    assert proc.returncode == 2
    assert proc.stderr == "fmsweep: error: fmsweep cancel: the following arguments are required: sweep_dir\n"


def test_the_rest_of_the_command_line_is_still_hydras() -> None:
    help_text = fmsweep_cli("--help")
    assert help_text.returncode == 0, help_text.stderr
    assert help_text.stdout.startswith("fmsweep: the Fashion-MNIST practical")
    assert "== Config groups (group=option) ==" in help_text.stdout
    config = fmsweep_cli("model=fc", "epochs=7", "--cfg", "job")
    assert config.returncode == 0, config.stderr
    assert "epochs: 7" in config.stdout and "FullyConnected" in config.stdout
    install = fmsweep_cli("-sc", "install=bash")
    assert install.returncode == 0 and "hydra_bash_completion" in install.stdout
    bad = fmsweep_cli("modle=fc")
    assert bad.returncode == 2 and bad.stderr.startswith("fmsweep: error: ") and len(bad.stderr.splitlines()) == 1


def run_resume(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> tuple[list[str], str]:
    """`fmsweep resume ARGV` in this process with Hydra's app replaced: the sys.argv and the cwd it was given."""
    seen: list[tuple[list[str], str]] = []
    monkeypatch.setattr(fmsweep.__main__, "main", lambda: seen.append((list(sys.argv), os.getcwd())))
    monkeypatch.setattr(sys, "argv", ["fmsweep", "resume", *argv])
    resume.main(argv)
    [(args, cwd)] = seen
    return args, cwd


def test_resume_runs_the_recorded_command_from_its_folder_with_the_sweep_dir_pinned(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    started_in, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    started_in.mkdir()
    elsewhere.mkdir()
    recorded = ["-m", "model=fc", "seed=0,1", "hydra.sweep.dir=multirun/old", "hydra/launcher=slurm"]
    make_sweep(tmp_path / "sweep", "slurm", ["11_0", "11_1"], command=recorded, cwd=started_in)
    monkeypatch.chdir(elsewhere)
    args, cwd = run_resume(monkeypatch, ["../sweep"])
    assert cwd == str(started_in)
    assert args == [
        "fmsweep",
        "-m",
        "model=fc",
        "seed=0,1",
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    assert (
        capsys.readouterr().out == f"fmsweep: resuming ../sweep: fmsweep -m model=fc seed=0,1 "
        f"hydra/launcher=slurm hydra.sweep.dir={tmp_path / 'sweep'}\n"
    )


@pytest.mark.parametrize("flag, value", [("--detach", "true"), ("--attach", "false")])
def test_resume_detach_or_attach_overrides_the_recorded_choice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flag: str, value: str
) -> None:
    recorded = ["-m", "seed=0,1", "+hydra.sweeper.detach=true", f"++hydra.sweep.dir={tmp_path}"]
    make_sweep(tmp_path, "slurm", ["11_0", "11_1"], command=recorded)
    args, _ = run_resume(monkeypatch, [str(tmp_path), flag])
    assert args == ["fmsweep", "-m", "seed=0,1", f"hydra.sweep.dir={tmp_path}", f"hydra.sweeper.detach={value}"]
    args, _ = run_resume(monkeypatch, [str(tmp_path)])
    assert args == ["fmsweep", "-m", "seed=0,1", "+hydra.sweeper.detach=true", f"hydra.sweep.dir={tmp_path}"]


@pytest.mark.parametrize(
    "path",
    [
        "/data/sweeps/2024-05-01/12-00-00",
        "/tmp/a,b",
        "/tmp/my sweep",
        "/tmp/~x",
        "/tmp/it's",
        "/tmp/[x]=y",
        "/tmp/${x}",
        "/tmp/trailing\\",
        "/tmp/é",
    ],
)
def test_the_pinned_sweep_dir_reads_back_as_the_same_path_in_hydras_grammar(path: str) -> None:
    override = OverridesParser.create().parse_override(f"hydra.sweep.dir={resume.hydra_string(path)}")
    assert not override.is_sweep_override()
    value = override.value()
    assert isinstance(value, str)
    assert value.replace("\\${", "${") == path  # OmegaConf resolves \${ to ${


@pytest.mark.slow
def test_resume_trains_only_the_job_that_is_missing(tiny_sweep: Path, tmp_path: Path) -> None:
    """The real command, from another folder: the sweep's command runs again in its own folder on the copy, the
    job whose dir was deleted trains again, and the completed ones are left as they were."""
    sweep_dir = Path(shutil.copytree(tiny_sweep, tmp_path / "sweep"))
    jobs = manifest.require(sweep_dir).jobs
    shutil.rmtree(sweep_dir / jobs[1].name)
    kept = {job.name: (sweep_dir / job.name / "metrics.json").read_bytes() for job in jobs if job.num != 1}
    proc = fmsweep_cli("resume", "sweep", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("fmsweep: resuming sweep: fmsweep -m ")
    assert proc.stdout.splitlines()[0].endswith(f" hydra.sweep.dir={sweep_dir}")
    assert json.loads((sweep_dir / jobs[1].name / "metrics.json").read_text())["status"] == "completed"
    assert {name: (sweep_dir / name / "metrics.json").read_bytes() for name in kept} == kept


def test_resume_of_a_sweep_whose_folder_is_gone_is_one_line(tmp_path: Path) -> None:
    make_sweep(tmp_path / "sweep", "slurm", ["11_0"], cwd=tmp_path / "gone")
    proc = fmsweep_cli("resume", str(tmp_path / "sweep"))
    assert proc.returncode == 2
    assert (
        proc.stderr.startswith(f"fmsweep: error: {tmp_path / 'gone'}, where the sweep")
        and len(proc.stderr.splitlines()) == 1
    )


def test_completion_offers_the_tools_beside_hydras_overrides() -> None:
    first = query("fmsweep ")
    assert first[:5] == TOOLS and "model=" in first and "epochs=" in first
    assert query("fmsweep re") == ["resume", "report", "reg.", "reg="]
    assert query("fmsweep st") == ["status", "stack="]
    assert query("fmsweep model=") == ["model=fancy_cnn", "model=fc", "model=linear", "model=vanilla_cnn"]
    assert "status" not in query("fmsweep model=fc ")
    assert query("fmsweep re", shell="fish") == ["resume", "report", "reg.", "reg="]


def test_completion_after_a_tool_offers_directories(tmp_path: Path) -> None:
    for d in ("sweep_a/2024/run", "sweep_b", ".hidden"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "sweep_file").touch()
    assert query("fmsweep status ", cwd=tmp_path) == ["sweep_a/", "sweep_b/"]
    assert query("fmsweep resume sw", cwd=tmp_path) == ["sweep_a/", "sweep_b/"]
    assert query("fmsweep cancel sweep_a/", cwd=tmp_path) == ["sweep_a/2024/"]
    assert query("fmsweep report .h", cwd=tmp_path) == [".hidden/"]
    assert query(f"fmsweep ensemble --top-k 2 {tmp_path}/sweep_a/20", cwd=ROOT) == [f"{tmp_path}/sweep_a/2024/"]
    assert query("fmsweep status nothing", cwd=tmp_path) == []


@pytest.mark.skipif(
    not (BIN / "fmsweep").is_file() or shutil.which("bash") is None,
    reason="no installed fmsweep console script beside this Python, or no bash",
)
def test_bash_completes_through_the_installed_function(tmp_path: Path) -> None:
    """The function that `eval "$(fmsweep -sc install=bash)"` defines, called as bash calls it on <Tab>."""
    (tmp_path / "multirun").mkdir()
    script = """eval "$(fmsweep -sc install=bash)"
complete_line() {
    COMP_LINE="$1"; COMP_POINT=${#1}; COMP_WORDS=($1); COMP_CWORD=$2
    hydra_bash_completion; echo "${COMPREPLY[*]}"
}
complete_line "fmsweep canc" 1
complete_line "fmsweep cancel mu" 2
complete_line "fmsweep mode" 1
"""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["cancel", "multirun/", "model. model="]


def test_cancel_under_the_basic_launcher_records_nothing(tmp_path: Path) -> None:
    make_sweep(tmp_path, "basic", [None, None])
    before = (tmp_path / manifest.FILE).read_text()
    proc = fmsweep_cli("cancel", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"fmsweep: nothing to cancel: {tmp_path} ran under the basic launcher")
    assert (tmp_path / manifest.FILE).read_text() == before


def test_cancel_under_submitit_local_stops_the_live_job_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """SIGTERM to the job processes alive (one whose cmdline names submitit, as a local job's does); not to an
    ended job's pid, nor to a live process that merely got such a pid."""
    sleep = [sys.executable, "-c", "import time; time.sleep(3600)"]
    job = subprocess.Popen([*sleep, "submitit"])
    stranger = subprocess.Popen(sleep)
    ended = subprocess.Popen([sys.executable, "-c", "pass", "submitit"])
    ended.wait()
    try:
        make_sweep(
            tmp_path, "submitit_local", [str(job.pid), str(stranger.pid), str(ended.pid), str(job.pid)], completed=(2,)
        )
        cancel.main([str(tmp_path)])
        assert job.wait(timeout=10) == -signal.SIGTERM
        assert stranger.poll() is None
        assert capsys.readouterr().out == (
            f"fmsweep: cancelled 1 local job of {tmp_path} (pids {job.pid}); 3 jobs recorded cancelled, 1 completed "
            f"before; resume with: fmsweep resume {tmp_path}\n"
        )
        assert [j.cancelled for j in manifest.require(tmp_path).jobs] == [True, True, False, True]
    finally:
        for proc in (job, stranger):
            proc.kill()
            proc.wait()


def test_status_and_cancel_work_where_torch_cannot_be_imported(tmp_path: Path) -> None:
    """The sweep tools a login node runs need no torch: with a `torch` that fails to import ahead of the real one,
    `fmsweep status` reads a live submitit_local sweep and `fmsweep cancel` stops its job and records it."""
    blocked = tmp_path / "blocked"
    (blocked / "torch").mkdir(parents=True)
    (blocked / "torch" / "__init__.py").write_text("raise ImportError('torch is not installed here')\n")
    no_torch = {"PYTHONPATH": str(blocked)}
    probe = subprocess.run(
        [sys.executable, "-c", "import torch"],
        env={**os.environ, **no_torch},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode != 0 and "torch is not installed here" in probe.stderr  # the block works
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", "submitit"])
    try:
        sweep_dir = tmp_path / "sweep"
        make_sweep(sweep_dir, "submitit_local", [str(job.pid), str(job.pid)], completed=(1,))
        shown = fmsweep_cli("status", str(sweep_dir), env=no_torch)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith("2 jobs (submitit_local): 0 pending, 1 running, 1 completed, 0 failed; ")
        cancelled = fmsweep_cli("cancel", str(sweep_dir), env=no_torch)
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.startswith(
            f"fmsweep: cancelled 1 local job of {sweep_dir} (pids {job.pid}); 1 job "
            f"recorded cancelled, 1 completed before"
        )
        assert job.wait(timeout=10) == -signal.SIGTERM
        assert [j.cancelled for j in manifest.require(sweep_dir).jobs] == [True, False]
    finally:
        job.kill()
        job.wait()


def squeue_ids() -> set[str]:
    return set(
        subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, check=True).stdout.split()
    )


def sacct_states(job_ids: list[str], timeout_s: float = 300) -> dict[str, str]:
    """Accounting's state of each job (each job id listed, as itself or by its tasks), once none is pending or
    running there: slurmdbd may take a while under load. An array's tasks that never started share one line
    (`123_[1-3]`)."""
    deadline = time.time() + timeout_s
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)], capture_output=True, text=True
        ).stdout
        states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
        every = all(any(job == i or job.startswith(f"{i}_") for job in states) for i in job_ids)
        ended = every and all(s not in ("PENDING", "RUNNING", "REQUEUED") for s in states.values())
        if ended or time.time() > deadline:
            return states
        time.sleep(0.5)


@pytest.mark.slurm
@needs_cluster
def test_cancel_on_slurm_scancels_the_sweeps_jobs_and_records_them(tmp_path: Path) -> None:
    """A sweep of two array tasks and a plain job, all live, and a job that completed: cancel scancels the three,
    waits until squeue lists none, accounting says CANCELLED, sweep.json records them (not the completed one);
    a second cancel finds nothing to do."""

    def sbatch(*args: str) -> str:
        return subprocess.run(
            [
                "sbatch",
                "--parsable",
                "-o",
                "/dev/null",
                "-c",
                "1",
                "--mem=50M",
                "-t",
                "60",
                *args,
                "--wrap",
                "sleep 3600",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    array, plain = sbatch("--array=0-1"), sbatch()
    ids = [f"{array}_0", f"{array}_1", plain]
    try:
        make_sweep(tmp_path, "slurm", [*ids, None], completed=(3,))
        proc = fmsweep_cli("cancel", str(tmp_path))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == (
            f"fmsweep: cancelled 3 SLURM jobs of {tmp_path} ({array} (array of 2), {plain}); 3 "
            f"jobs recorded cancelled, 1 completed before; resume with: fmsweep resume {tmp_path}\n"
        )
        assert not squeue_ids() & set(ids)
        states = sacct_states([array, plain])
        assert plain in states and any(job == array or job.startswith(f"{array}_") for job in states), states
        assert all(state.startswith("CANCELLED") for state in states.values()), states
        assert [j.cancelled for j in manifest.require(tmp_path).jobs] == [True, True, True, False]
        again = fmsweep_cli("cancel", str(tmp_path))
        assert again.returncode == 0, again.stderr
        assert again.stdout == f"fmsweep: nothing to cancel: no SLURM job of {tmp_path} is queued or running\n"
    finally:
        subprocess.run(["scancel", array, plain], capture_output=True)
