"""The checks of a sweep before anything is submitted (fmsweep.sweep.prelaunch): every job's config, composed as
Hydra composes it (by a shortcut, see prelaunch.SweepComposer), the time limit against SLURM's stop warning, and
(marker `slurm`, on the test cluster of tests/slurm/start.sh) the request against what the cluster says of itself
and against its job submit filter."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import CONF, ROOT, needs_cluster
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_loader import ConfigLoader
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, Node, OmegaConf, open_dict

from fmsweep.errors import UserError
from fmsweep.sweep import prelaunch

# jobs of a sweep mixing every kind of override: group choices (shared by several jobs, or alone), plain values
# (numbers, lists, a dict, a quoted string, an interpolation, ++key), hydra.* values and groups, and the kinds that
# go through Hydra's full composition: +key and ~key on app keys, +key on hydra keys
MIXED_JOBS = [
    ["model=fc", "seed=0", "optimizer.lr=0.01"],
    ["model=fc", "seed=1", "optimizer.lr=0.02", "model.hidden=[32]"],
    ["seed=2", "model=linear", "reg.l2=0.001"],
    ["experiment=fc", "seed=3", "early_stop={patience: 2}"],
    ["model=fc", "seed=4", "model.dropout=${reg.input_dropout}", "data.normalize='global'"],
    ["model=fc", "seed=5", "hydra.job.config.override_dirname.kv_sep=:"],
    ["hydra/launcher=submitit_local", "seed=6"],
    ["+data.subset=1000", "seed=7"],
    ["++epochs=2", "seed=8"],
    ["model=fc", "~model.input_dropout", "seed=9"],
    ["+hydra.job.env_set.FOO=bar", "seed=10"],
    ["seed=11", "optimizer=sgd", "optimizer.momentum=0.5"],
    ["seed=12", "model=linear", "reg.l2=0.01"],
]


@pytest.fixture
def sweep(data_root: Path, tmp_path: Path) -> Iterator[tuple[ConfigLoader, DictConfig, list[str]]]:
    """Hydra's config loader and the master config of `fmsweep -m ... seed=0,1`, as fmsweep's sweepers get them,
    and the overrides that every job of that sweep has."""
    common = [f"data.root={data_root}", "data.download=false", "device=cpu", "epochs=1"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="fmsweep"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        loader = hydra.config_loader
        master = loader.load_configuration(
            "config",
            [f"hydra.sweep.dir={tmp_path}", "hydra.mode=MULTIRUN", *common, "seed=0,1"],
            run_mode=RunMode.MULTIRUN,
        )
        yield loader, master, common


def hydra_configs(loader: ConfigLoader, master: DictConfig, jobs: list[list[str]], first_num: int) -> list[DictConfig]:
    """The jobs' configs by Hydra's own composition, numbered as check_jobs numbers them."""
    configs = []
    for num, overrides in enumerate(jobs, first_num):
        cfg = loader.load_sweep_config(master, overrides)
        with open_dict(cfg):
            cfg.hydra.job.num = num
        configs.append(cfg)
    return configs


def hydra_compositions(loader: ConfigLoader, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The overrides of each composition by Hydra (`load_sweep_config`) from now on, in order."""
    calls: list[list[str]] = []
    compose = loader.load_sweep_config

    def counted(config: DictConfig, overrides: list[str]) -> DictConfig:
        calls.append(list(overrides))
        return compose(config, overrides)

    monkeypatch.setattr(loader, "load_sweep_config", counted)
    return calls


def nodes(node: Node, path: str = "") -> Iterator[tuple[str, str, dict[str, Any], Any]]:
    """Every node of a config: its path, class, metadata (types, flags) and, for a value, its raw value (an
    interpolation unresolved)."""
    metadata = {k: v for k, v in vars(node._metadata).items() if k != "resolver_cache"}
    content = node._content if isinstance(node, (DictConfig, ListConfig)) else node._value()
    yield path, type(node).__name__, metadata, content if not isinstance(content, (dict, list)) else None
    children = content.items() if isinstance(content, dict) else enumerate(content) if isinstance(content, list) else ()
    for key, child in children:
        yield from nodes(child, f"{path}.{key!s}")


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The whole config resolved, with the output dir that Hydra sets when the job starts (the hydra node's logging
    refers to it)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = "/job"
    tree = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(tree, dict)
    return cast(dict[str, Any], tree)


def assert_as_hydra_composes(got: list[DictConfig], want: list[DictConfig]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert OmegaConf.to_container(g) == OmegaConf.to_container(w)
        assert list(nodes(g)) == list(nodes(w))
        assert g._metadata.resolver_cache == w._metadata.resolver_cache  # the master's: the same timestamps
        assert resolved(g) == resolved(w)


def test_the_jobs_of_a_mixed_sweep_are_composed_as_hydra_composes_them(
    sweep: tuple[ConfigLoader, DictConfig, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    loader, master, common = sweep
    jobs = [[*common, *job] for job in MIXED_JOBS]
    want = hydra_configs(loader, master, jobs, 3)
    compositions = hydra_compositions(loader, monkeypatch)
    got = prelaunch.check_jobs(loader, master, jobs, first_num=3)
    assert_as_hydra_composes(got, want)
    # Hydra composed each combination of group choices and hydra.* values once, and each job with a +key or ~key
    assert compositions == [
        ["model=fc"],
        ["model=linear"],
        ["experiment=fc"],
        ["model=fc", "hydra.job.config.override_dirname.kv_sep=:"],
        ["hydra/launcher=submitit_local"],
        jobs[7],
        [],
        jobs[9],
        jobs[10],
        ["optimizer=sgd"],
    ]
    assert [str(c.hydra.sweep.subdir) for c in got[:2]] == [
        "3_epochs=1,model=fc,optimizer.lr=0.01,seed=0",
        "4_epochs=1,model.hidden=[32],model=fc,optimizer.lr=0.02,seed=1",
    ]
    assert str(got[5].hydra.sweep.subdir) == "8_epochs:1,model:fc,seed:5"


def test_a_grid_is_composed_once_for_each_combination_of_its_group_choices(
    sweep: tuple[ConfigLoader, DictConfig, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    loader, master, common = sweep
    parser = OverridesParser.create(config_loader=loader)  # the jobs as Hydra's basic sweeper expands the grid
    grid = parser.parse_overrides([*common, "model=linear,fc", "optimizer.lr=0.01,0.1", "seed=range(5)"])
    jobs = [list(job) for batch in BasicSweeper.split_arguments(grid, None) for job in batch]
    want = hydra_configs(loader, master, jobs, 0)
    compositions = hydra_compositions(loader, monkeypatch)
    got = prelaunch.check_jobs(loader, master, jobs)
    assert_as_hydra_composes(got, want)
    assert compositions == [["model=linear"], ["model=fc"]]
    assert [int(c.hydra.job.num) for c in got] == list(range(20))
    got[0].seed = 99  # each job's config is its own
    assert [int(c.seed) for c in got[:3]] == [99, 1, 2]


def test_hydra_overrides_of_the_command_line_that_add_keys_keep_the_grid_shared(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`+hydra.launcher.additional_parameters={hold:true}` (any +hydra key) on the command line is in every job's
    composition, the shared one too: the grid is still composed once per group choice, as Hydra composes it."""
    common = [f"data.root={data_root}", "data.download=false", "device=cpu", "epochs=1"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="fmsweep"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        loader = hydra.config_loader
        master = loader.load_configuration(
            "config",
            [
                f"hydra.sweep.dir={tmp_path}",
                "hydra.mode=MULTIRUN",
                "hydra/launcher=submitit_local",
                "+hydra.launcher.additional_parameters={hold:true}",
                "+hydra.job.env_set.FOO=bar",
                *common,
                "seed=0,1",
            ],
            run_mode=RunMode.MULTIRUN,
        )
        jobs = [[*common, "model=fc", f"seed={seed}"] for seed in range(4)]
        want = hydra_configs(loader, master, jobs, 0)
        compositions = hydra_compositions(loader, monkeypatch)
        got = prelaunch.check_jobs(loader, master, jobs)
    assert_as_hydra_composes(got, want)
    assert compositions == [["model=fc"]]
    assert got[0].hydra.launcher.additional_parameters == {"hold": True}


def test_a_bad_job_is_one_user_error_naming_it(sweep: tuple[ConfigLoader, DictConfig, list[str]]) -> None:
    loader, master, common = sweep
    jobs = [[*common, "seed=0"], [*common, "seed=1", "model=fc", "model.dropout=2"]]
    with pytest.raises(UserError) as error:
        prelaunch.check_jobs(loader, master, jobs, first_num=7)
    assert str(error.value) == (
        "job 8_epochs=1,model.dropout=2,model=fc,seed=1: model.dropout must be a number in "
        "[0, 1), got 2; nothing was launched"
    )


@pytest.mark.parametrize("bad", ["no_such_key=1", "model.no_such_key=1", "+seed=3", "~no_such_key", "model=nope"])
def test_a_job_that_hydra_cannot_compose_fails_with_hydras_own_error(
    sweep: tuple[ConfigLoader, DictConfig, list[str]], bad: str
) -> None:
    loader, master, common = sweep
    jobs = [[*common, "seed=0"], [*common, "seed=1", bad]]
    with pytest.raises(ConfigCompositionException) as hydra_error:
        loader.load_sweep_config(master, jobs[1])
    with pytest.raises(ConfigCompositionException) as error:
        prelaunch.check_jobs(loader, master, jobs)
    assert str(error.value) == str(hydra_error.value)
    assert str(error.value.__cause__) == str(hydra_error.value.__cause__)


@pytest.mark.parametrize(
    ("timeout_min", "signal_delay_s", "least_min"), [(2, 120, 4), (3, 120, 4), (1, 30, 2), (1, 90, 3), (5, 200, 7)]
)
def test_a_time_limit_with_too_little_training_before_the_stop_warning_is_refused(
    timeout_min: int, signal_delay_s: int, least_min: int
) -> None:
    with pytest.raises(UserError, match=rf"set hydra\.launcher\.timeout_min={least_min} or more"):
        prelaunch.check_slurm_timeout({"timeout_min": timeout_min, "signal_delay_s": signal_delay_s})
    prelaunch.check_slurm_timeout({"timeout_min": least_min, "signal_delay_s": signal_delay_s})  # the one it names


@pytest.mark.parametrize(("timeout_min", "signal_delay_s"), [(4, 120), (240, 120), (2, 30), (10, 120)])
def test_a_time_limit_that_leaves_enough_training_passes(timeout_min: int, signal_delay_s: int) -> None:
    prelaunch.check_slurm_timeout({"timeout_min": timeout_min, "signal_delay_s": signal_delay_s})


def test_the_time_limit_is_checked_before_sbatch_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_slurm(*args: object, **kwargs: object) -> None:
        raise AssertionError("SLURM was asked")

    monkeypatch.setattr(prelaunch.shutil, "which", no_slurm)
    monkeypatch.setattr(prelaunch.subprocess, "run", no_slurm)
    with pytest.raises(UserError, match="timeout_min=2 leaves a job 0 s of training"):
        prelaunch.check_slurm_request({"timeout_min": 2, "signal_delay_s": 120, "partition": None})


def test_a_slurm_sweep_with_too_short_a_time_limit_is_one_line_and_submits_nothing(
    data_root: Path, tmp_path: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fmsweep",
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.timeout_min=2",
            f"data.root={data_root}",
            "data.download=false",
            "device=cpu",
            "seed=0,1",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "fmsweep: error: hydra.launcher.timeout_min=2 leaves a job 0 s of training before SLURM's stop warning, which "
        "comes hydra.launcher.signal_delay_s=120 s before the time limit; it needs at least 120 s: set "
        "hydra.launcher.timeout_min=4 or more; nothing was submitted"
    ]
    assert not sweep_dir.exists()


@pytest.mark.parametrize("kind", ["shortcut", "full composition"])
def test_a_job_named_by_display_overrides_keeps_its_full_values_in_its_config(
    sweep: tuple[ConfigLoader, DictConfig, list[str]], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search names a trial's job dir by its values rounded for people (space.display_overrides); its config
    trains with the full values, by the shortcut and by Hydra's full composition (+key) alike."""
    loader, master, common = sweep
    extra = ["+data.subset=1000"] if kind == "full composition" else []
    job = [*common, *extra, "model=fc", "optimizer.lr=0.006431172050131994", "reg.l2=1.2345678e-05"]
    names = [*common, *extra, "model=fc", "optimizer.lr=0.006431", "reg.l2=1.235e-05"]
    compositions = hydra_compositions(loader, monkeypatch)
    cfg, plain = prelaunch.check_jobs(loader, master, [job, job], first_num=4, names=[names, job])
    assert (job in compositions) == bool(extra)
    assert cfg.optimizer.lr == 0.006431172050131994 and cfg.reg.l2 == 1.2345678e-05
    assert list(cfg.hydra.overrides.task) == job
    shown = ["+data.subset=1000"] * bool(extra) + ["epochs=1", "model=fc", "optimizer.lr=0.006431", "reg.l2=1.235e-05"]
    assert str(cfg.hydra.job.override_dirname) == ",".join(shown)
    assert str(cfg.hydra.sweep.subdir) == f"4_{cfg.hydra.job.override_dirname}"
    assert str(plain.hydra.sweep.subdir) == "5_" + str(plain.hydra.job.override_dirname)
    assert "optimizer.lr=0.006431172050131994" in str(plain.hydra.job.override_dirname)


def test_a_controller_that_does_not_answer_is_no_verdict_on_the_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sbatch --test-only failing because the controller does not answer says so; it does not call the request
    impossible (the negative control: a refused request is)."""
    sbatch = tmp_path / "sbatch"
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    params = {"timeout_min": 10, "signal_delay_s": 120, "partition": None, "cpus_per_task": 1}
    sbatch.write_text(
        "#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Socket timed out on send/recv operation' >&2\n"
        "exit 1\n"
    )
    sbatch.chmod(0o755)
    with pytest.raises(
        UserError,
        match=r"^SLURM does not answer \(sbatch --test-only: Batch job submission failed: "
        r"Socket timed out on send/recv operation\); nothing was submitted \(try again",
    ):
        prelaunch.check_slurm_request(params)
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: Invalid partition name specified' >&2\nexit 1\n")
    with pytest.raises(
        UserError,
        match=r"^SLURM cannot run this sweep's jobs \(cpus_per_task=1, timeout_min=10\): "
        "Invalid partition name specified",
    ):
        prelaunch.check_slurm_request(params)


# The test cluster's own description (tests/slurm/start.sh), as `scontrol -a -o show partition`, `scontrol -o show
# node` and `sacctmgr -n -P show user root withassoc format=Cluster,DefaultAccount,Account,Partition,QOS` print it
# (cut to the fields read); the node's GPUs typed here, and the account lab without the QOS high.
PARTITIONS = """\
PartitionName=debug AllowGroups=ALL AllowQos=ALL Default=YES QoS=N/A MaxTime=UNLIMITED Nodes=vm State=UP
PartitionName=short AllowGroups=ALL AllowQos=ALL Default=NO QoS=N/A MaxTime=00:30:00 Nodes=vm State=UP
PartitionName=long AllowGroups=ALL AllowQos=ALL Default=NO QoS=N/A MaxTime=1-00:00:00 Nodes=vm State=UP
"""
NODES = """\
NodeName=vm Arch=x86_64 CoresPerSocket=2 CPUAlloc=0 Gres=gpu:a100:2(S:0),gpu:v100:1 NodeAddr=vm Partitions=debug,short
"""
ASSOCIATIONS = """\
fmsweep|root|lab||capped,low,lowterm,normal
fmsweep|root|root||capped,high,low,lowterm,normal
"""


TIME_LIMITS = {"30": 1800, "00:30:00": 1800, "2:00:00": 7200, "5:30": 330, "1-00:00:00": 86400, "1-2": 93600}


@pytest.mark.parametrize(
    ("text", "seconds"), [*TIME_LIMITS.items(), ("2-3:04", 183840), ("UNLIMITED", None), ("INFINITE", None)]
)
def test_slurm_time_limits_are_read_in_each_of_slurms_formats(text: str, seconds: int | None) -> None:
    assert prelaunch.slurm_seconds(text) == seconds


@pytest.mark.parametrize(
    ("params", "refusal"),
    [
        (
            {"partition": "long", "timeout_min": 1441},
            "hydra.launcher.timeout_min=1441 is above partition long's MaxTime of 1440 min: lower timeout_min or "
            "choose another partition (sinfo shows them); nothing was submitted",
        ),
        (
            {"timeout_min": 10, "gres": "gpu:a100:3"},
            "hydra.launcher.gres=gpu:a100:3 asks for more a100 GPUs than a node of the default partition debug has "
            "(2): lower it or choose another partition (sinfo -o '%P %G' shows their GPUs); nothing was submitted",
        ),
        (
            {"partition": "short", "timeout_min": 10, "gpus_per_node": 4},
            "hydra.launcher.gpus_per_node=4 asks for more GPUs than a node of partition short has (3): lower it or "
            "choose another partition (sinfo -o '%P %G' shows their GPUs); nothing was submitted",
        ),
    ],
)
def test_a_request_above_the_partitions_limits_is_refused(params: dict[str, Any], refusal: str) -> None:
    with pytest.raises(UserError) as error:
        prelaunch.check_partition(params, PARTITIONS, NODES)
    assert str(error.value) == refusal


@pytest.mark.parametrize(
    "params",
    [
        {"partition": "short", "timeout_min": 30, "gpus_per_node": 3},
        {"timeout_min": 10**6, "gres": "gpu:v100:1"},
        {"partition": "long", "timeout_min": 10, "gpus_per_node": 8},  # long's nodes: not in `scontrol show node`
        {"partition": "short,long", "timeout_min": 10**6},  # SLURM runs it in either: only their names are checked
    ],
)
def test_a_request_within_the_partitions_limits_passes(params: dict[str, Any]) -> None:
    prelaunch.check_partition(params, PARTITIONS, NODES)


def test_a_qos_that_the_association_does_not_allow_is_refused() -> None:
    def names() -> str:
        return "normal\ncapped\nlow\nlowterm\nhigh\n"

    params = {"account": "LAB", "qos": "high"}
    with pytest.raises(UserError) as error:
        prelaunch.check_qos(params, "root", ASSOCIATIONS, names)
    assert str(error.value) == (
        "hydra.launcher.qos=high is not a QOS that user root may use in account LAB (capped, low, lowterm, normal): "
        "choose one of those, or ask the cluster's admins for it; nothing was submitted"
    )
    prelaunch.check_qos({"qos": "High"}, "root", ASSOCIATIONS, names)  # the default account root allows it
    prelaunch.check_qos({"qos": "high"}, "root", ASSOCIATIONS + "other|root|root||high\n", names)  # which cluster's?


def test_a_cluster_that_does_not_answer_leaves_its_checks_to_sbatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scontrol or sacctmgr that fails, or is missing, is no verdict: nothing is refused on a guess."""
    params = {"partition": "nope", "qos": "nope", "timeout_min": 10**6, "gpus_per_node": 99}
    for command in ("scontrol", "sacctmgr"):
        (tmp_path / command).write_text("#!/bin/sh\necho 'Unable to contact slurm controller' >&2\nexit 1\n")
        (tmp_path / command).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    prelaunch.check_cluster(params)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    prelaunch.check_cluster(params)


def test_both_forms_of_gpu_request_are_refused_before_slurm_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_slurm(*args: object, **kwargs: object) -> None:
        raise AssertionError("SLURM was asked")

    monkeypatch.setattr(prelaunch.shutil, "which", no_slurm)
    monkeypatch.setattr(prelaunch.subprocess, "run", no_slurm)
    with pytest.raises(UserError) as error:
        prelaunch.check_slurm_request({"timeout_min": 10, "signal_delay_s": 120, "gpus_per_node": 1, "gres": "gpu:1"})
    assert str(error.value) == (
        "hydra.launcher.gpus_per_node=1 and hydra.launcher.gres=gpu:1 both ask for GPUs: keep one form, e.g. "
        "hydra.launcher.gres=null, or hydra.launcher.gpus_per_node=null; nothing was submitted"
    )


def test_a_filters_refusal_of_a_gres_request_names_gpus_per_node() -> None:
    stderr = "sbatch: error: this site takes GPUs as --gpus-per-node\nallocation failure: Unspecified error\n"
    assert prelaunch.gpu_refusal({"gres": "gpu:2"}, stderr) == (
        "SLURM refused the GPU request hydra.launcher.gres=gpu:2 (this site takes GPUs as --gpus-per-node): this "
        "cluster may take it as hydra.launcher.gpus_per_node=2 hydra.launcher.gres=null"
    )
    assert prelaunch.gpu_refusal({"gres": "gpu:2"}, "sbatch: error: Invalid qos specification\n") is None


def refused_sweep(data_root: Path, tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`fmsweep -m hydra/launcher=slurm <overrides> seed=0,1` by the real command line, with the preset's
    partition, account and QOS not taken from the environment: the process, and its sweep dir, named uniquely so
    that SLURM's queue can be searched for its jobs."""
    sweep_dir = tmp_path / f"refused-{uuid.uuid4().hex[:12]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FMSWEEP_SLURM_")}
    args = [f"data.root={data_root}", "data.download=false", "device=cpu", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(
        [sys.executable, "-m", "fmsweep", "-m", "hydra/launcher=slurm", *overrides, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, sweep_dir


def assert_nothing_submitted(sweep_dir: Path) -> None:
    """No record of the sweep, and no job of it (named `fmsweep:<sweep dir's name>:...`) in SLURM's queue."""
    assert not sweep_dir.exists()
    names = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%j"], capture_output=True, text=True, check=True)
    assert not [name for name in names.stdout.split() if name.startswith(f"fmsweep:{sweep_dir.name}")]


USER = pwd.getpwuid(os.getuid()).pw_name
REFUSALS = {
    "time above short's MaxTime": (
        ["hydra.launcher.partition=short", "hydra.launcher.timeout_min=120"],
        "hydra.launcher.timeout_min=120 is above partition short's MaxTime of 30 min: lower timeout_min or choose "
        "another partition (sinfo shows them); nothing was submitted",
    ),
    "unknown partition": (
        ["hydra.launcher.partition=nope"],
        "hydra.launcher.partition=nope is not a partition of this cluster, whose partitions are debug, short, "
        "gresonly: choose one of them; nothing was submitted",
    ),
    "more GPUs than a node has": (
        ["hydra.launcher.gpus_per_node=3"],
        "hydra.launcher.gpus_per_node=3 asks for more GPUs than a node of the default partition debug has (2): "
        "lower it or choose another partition (sinfo -o '%P %G' shows their GPUs); nothing was submitted",
    ),
    "unknown QOS": (
        ["hydra.launcher.account=lab", "hydra.launcher.qos=nope"],
        f"hydra.launcher.qos=nope is not a QOS of this cluster: choose one that user {USER} may use in account lab "
        "(capped, high, low, lowterm, normal); nothing was submitted",
    ),
    "gresonly's filter refuses gpus_per_node": (
        ["hydra.launcher.partition=gresonly"],
        "SLURM refused the GPU request hydra.launcher.gpus_per_node=1 (partition gresonly takes GPUs only as "
        "--gres=gpu:N, not as --gpus-per-node): this cluster may take it as hydra.launcher.gres=gpu:1 "
        "hydra.launcher.gpus_per_node=null; nothing was submitted",
    ),
}


@pytest.mark.slurm
@needs_cluster
@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_request_the_cluster_cannot_run_is_one_line_and_submits_nothing(
    data_root: Path, tmp_path: Path, case: str
) -> None:
    overrides, refusal = REFUSALS[case]
    proc, sweep_dir = refused_sweep(data_root, tmp_path, *overrides)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"fmsweep: error: {refusal}"]
    assert_nothing_submitted(sweep_dir)


def preset_params(*overrides: str) -> dict[str, Any]:
    """The SLURM launcher's params of the shipped preset with `overrides`, as hydra-submitit's launcher gets them."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert isinstance(params, dict)
    return {str(k): v for k, v in params.items() if k != "_target_"}


@pytest.mark.slurm
@needs_cluster
@pytest.mark.parametrize(
    "gpus",
    [
        ["hydra.launcher.partition=short"],
        ["hydra.launcher.partition=gresonly", "hydra.launcher.gres=gpu:1", "hydra.launcher.gpus_per_node=null"],
    ],
    ids=["gpus_per_node on short", "gres on gresonly"],
)
def test_the_shipped_preset_within_the_clusters_limits_passes(monkeypatch: pytest.MonkeyPatch, gpus: list[str]) -> None:
    """The negative control: the preset's GPU request (gpus_per_node=1, or its other form where the filter wants
    it) with timeout_min=10 and an allowed QOS passes every check, sbatch --test-only included (its CPUs and memory
    cut to the test node's size)."""
    for name in ("FMSWEEP_SLURM_PARTITION", "FMSWEEP_SLURM_ACCOUNT", "FMSWEEP_SLURM_QOS"):
        monkeypatch.delenv(name, raising=False)
    fit = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
    params = preset_params(*gpus, "hydra.launcher.timeout_min=10", "hydra.launcher.qos=normal", *fit)
    request = prelaunch.gpu_request(params)
    assert request is not None and request[1:] == (None, 1)
    prelaunch.check_slurm_request(params)
