"""A sweep checked as a whole in the launching process, before any job starts or is submitted: every job's
composed config, the data set (downloaded once, here, rather than by every job), a detached sweep's launcher, and
on SLURM the time limit against the stop warning and the resource request against the cluster: against what it says
of itself (partitions, their time limits and nodes' GPUs, the user's QOS), then `sbatch --test-only` on the settings
the launch submits with (`launcher_settings`). A mistake is one UserError; nothing has been launched."""

from __future__ import annotations

import copy
import math
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf, open_dict

from fmsweep import data
from fmsweep.config import validate
from fmsweep.errors import UserError
from fmsweep.sweep import manifest
from fmsweep.sweep.slurm import Silent, slurm_output


def check_jobs(
    loader: ConfigLoader,
    config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    first_num: int = 0,
    *,
    names: Sequence[Sequence[str]] | None = None,
    composer: SweepComposer | None = None,
) -> list[DictConfig]:
    """Compose and validate the config of every job (numbered from `first_num`, as the launchers number them); the
    first bad one is a UserError naming the job as its dir is named. Then fetch the data set once for all jobs that
    may download it. Returns the composed configs, each what `loader.load_sweep_config` composes (see SweepComposer);
    with `names` (per job, the overrides its dir is named by, e.g. a search's values rounded for people), each job's
    hydra.job.override_dirname is made of those instead of its overrides. `composer`: one kept from earlier calls
    (a search's worker composes trial after trial), else a new one."""
    composer = composer or SweepComposer(loader, config)
    configs, roots = [], set()
    named = job_overrides if names is None else names
    for num, (overrides, name_overrides) in enumerate(zip(job_overrides, named, strict=True), first_num):
        cfg = composer.compose(list(overrides))
        if names is not None:
            name_dir(cfg, composer.parse(list(name_overrides)))
        with open_dict(cfg):
            cfg.hydra.job.num = num
        name = str(cfg.hydra.sweep.subdir)
        try:
            validate(cfg)
        except UserError as exc:
            raise UserError(f"job {name}: {exc}; nothing was launched") from None
        configs.append(cfg)
        if cfg.data.download:
            roots.add(str(cfg.data.root))
    for root in sorted(roots):
        data.fetch(root)
    return configs


class SweepComposer:
    """The configs of a sweep's jobs, exactly as Hydra's `load_sweep_config` composes them, at a few ms a job
    instead of about 50: Hydra's composition (search path, defaults tree, YAML files, merges) is run once for each
    combination of a job's *shared* overrides (config group choices, hydra.* values), and every job with that
    combination is a copy of it with the job's *plain* overrides (`key=value` or `++key=value` of the app config)
    applied as Hydra applies them, after the defaults list is composed.

    A plain override sets only its own key, as does a shared hydra.* value; so applying the plain ones after the
    shared ones (Hydra interleaves them in command-line order) ends in the same config. A job with an override
    that reads the config (+key, which must be absent, and ~key, on app or hydra keys), with key@pkg on a key, or
    with hydra.searchpath (which changes what is a group) goes through Hydra's full composition, as does any job
    whose shortcut raises (so that Hydra raises its own error: a sweep, an unknown key, a bad value)."""

    def __init__(self, loader: ConfigLoader, master: DictConfig) -> None:
        self.loader, self.master = loader, master
        self.parser = OverridesParser.create()  # as Hydra's composition parses
        self.parsed: dict[str, Override] = {}
        self.groups: dict[str, bool] = {}
        self.bases: dict[tuple[str, ...], DictConfig | None] = {}
        # a search path beyond the primary config's changes which keys are config groups. The command line's
        # hydra overrides (+hydra.launcher.x=... too) are in every job's composition, the shared ones included
        self.enabled = isinstance(loader, ConfigLoaderImpl) and not master.hydra.searchpath

    def compose(self, overrides: list[str]) -> DictConfig:
        """The job's config, as `loader.load_sweep_config(master, overrides)` returns it."""
        if self.enabled:
            parsed = self.parse(overrides)
            kinds = [self._kind(o) for o in parsed]
            if None not in kinds:
                shared = tuple(cast(str, o.input_line) for o, kind in zip(parsed, kinds) if kind == "shared")
                if shared not in self.bases:
                    self.bases[shared] = self._base(list(shared))
                base = self.bases[shared]
                if base is not None:
                    try:
                        return self._derive(base, parsed, [o for o, kind in zip(parsed, kinds) if kind == "plain"])
                    except Exception:  # noqa: BLE001 (Hydra's own composition raises its own error, or composes it after all)
                        pass
        return self.loader.load_sweep_config(self.master, overrides)

    def _base(self, shared: list[str]) -> DictConfig | None:
        """Hydra's config of a job with only the `shared` overrides; None where Hydra refuses them (each job then
        goes through Hydra, which says why)."""
        try:
            return self.loader.load_sweep_config(self.master, shared)
        except Exception:  # noqa: BLE001 (whatever Hydra refuses them with, each job then goes through Hydra: see above)
            return None

    def _derive(self, base: DictConfig, parsed: list[Override], plain: list[Override]) -> DictConfig:
        """A copy of `base` with what Hydra's composition does with a job's plain overrides: apply them to the
        config, list every non-hydra override in hydra.overrides.task and name the job dir from them; then the
        master config's resolver cache, as `load_sweep_config` copies it."""
        cfg = copy.deepcopy(base)
        ConfigLoaderImpl._apply_overrides_to_config(plain, cfg)
        cfg.hydra.overrides.task.clear()
        for override in parsed:
            if not override.is_hydra_override():
                cfg.hydra.overrides.task.append(override.input_line)
        name_dir(cfg, parsed)
        OmegaConf.copy_cache(from_config=self.master, to_config=cfg)
        return cfg

    def parse(self, overrides: list[str]) -> list[Override]:
        """Hydra's parse of each override, once per distinct string (a grid repeats most of them in every job)."""
        for line in overrides:
            if line not in self.parsed:
                self.parsed[line] = self.parser.parse_overrides([line])[0]
        return [self.parsed[line] for line in overrides]

    def _kind(self, override: Override) -> str | None:
        """ "shared": a config group override, or a hydra.* value; "plain": a `key=value` or `++key=value` of the
        app config; None: one that this shortcut does not reproduce. Groups and values are told apart as Hydra's
        defaults list does."""
        key = override.key_or_group
        if override.is_sweep_override() or key == "hydra.searchpath":
            return None
        if key not in self.groups:
            self.groups[key] = cast(ConfigLoaderImpl, self.loader).repository.group_exists(key)  # as self.enabled
        if self.groups[key] and not isinstance(override.value(), dict):
            return "shared"
        if override.type not in (OverrideType.CHANGE, OverrideType.FORCE_ADD) or override.package is not None:
            return None
        return "shared" if key == "hydra" or key.startswith(("hydra.", "hydra/")) else "plain"


def name_dir(cfg: DictConfig, overrides: list[Override]) -> None:
    """Set the job's hydra.job.override_dirname from the app overrides among `overrides`, as Hydra names it."""
    dirname = cfg.hydra.job.config.override_dirname
    cfg.hydra.job.override_dirname = get_overrides_dirname(
        overrides=[o for o in overrides if not o.is_hydra_override()],
        kv_sep=dirname.kv_sep,
        item_sep=dirname.item_sep,
        exclude_keys=dirname.exclude_keys,
    )


def is_slurm(launcher: Any) -> bool:
    return type(launcher).__name__ == "SlurmLauncher"


def check_detach(detach: bool, launcher: Any) -> None:
    """A detached sweep needs jobs that outlive the command: SLURM's."""
    if detach and not is_slurm(launcher):
        name = manifest.LAUNCHERS.get(type(launcher).__name__, type(launcher).__name__)
        raise UserError(
            f"hydra.sweeper.detach=true needs hydra/launcher=slurm: the jobs of the {name} launcher "
            f"end with the command that launched them; nothing was launched"
        )


def launcher_settings(params: dict[str, Any], kind: str) -> dict[str, Any]:
    """The submitit executor parameters of a hydra-submitit launcher's `params`, as the launcher passes them: its
    generic keys as they are, the others prefixed with `<kind>_` (slurm_, local_)."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    return {
        k if k in generic else f"{kind}_{k}": v
        for k, v in params.items()
        if k not in ("submitit_folder", "max_num_timeout")
    }


# the least training time a SLURM job must have between its start and the stop warning
MIN_TRAINING_S = 60


def check_slurm_timeout(params: dict[str, Any]) -> None:
    """Refuse a time limit that leaves a job too little training before SLURM's stop warning (USR2,
    `signal_delay_s` before the limit; the job then saves its last.pt and is requeued): less than the warning's own
    lead time, or than MIN_TRAINING_S. Below that, most of every allocation goes to starting, saving and requeueing,
    and the requeues (max_num_timeout) run out before the training ends."""
    timeout_s, delay_s = int(params["timeout_min"]) * 60, int(params["signal_delay_s"])
    least_s = max(delay_s, MIN_TRAINING_S)
    if timeout_s - delay_s < least_s:
        least_min = math.ceil((delay_s + least_s) / 60)
        raise UserError(
            f"hydra.launcher.timeout_min={params['timeout_min']} leaves a job "
            f"{max(timeout_s - delay_s, 0)} s of training before SLURM's stop warning, which comes "
            f"hydra.launcher.signal_delay_s={delay_s} s before the time limit; it needs at least "
            f"{least_s} s: set hydra.launcher.timeout_min={least_min} or more; nothing was submitted"
        )


NOT_SUBMITTED = "nothing was submitted"


def gpu_request(params: dict[str, Any]) -> tuple[str, str | None, int] | None:
    """The launcher's GPU request per node, in either form sbatch takes: (the override that makes it, the GPU type
    or None for any, the count); None when it asks for no GPU. Both forms at once is a UserError: SLURM would add
    them up, and a site's filter may refuse either."""
    per_node, gres = params.get("gpus_per_node"), params.get("gres")
    gpus = [gpu for gpu in gres_gpus(str(gres)) if gpu[1] > 0] if gres else []
    if per_node and gpus:
        raise UserError(
            f"hydra.launcher.gpus_per_node={per_node} and hydra.launcher.gres={gres} both ask for GPUs: keep one "
            f"form, e.g. hydra.launcher.gres=null, or hydra.launcher.gpus_per_node=null; {NOT_SUBMITTED}"
        )
    if per_node:
        return f"hydra.launcher.gpus_per_node={per_node}", None, int(per_node)
    if gpus:
        return f"hydra.launcher.gres={gres}", gpus[0][0], sum(count for _, count in gpus)
    return None


def gres_gpus(gres: str) -> list[tuple[str | None, int]]:
    """The GPUs of a GRES string, as sbatch's --gres and scontrol's node Gres= write them (`gpu:2`,
    `gpu:a100:4(S:0-1)`, `gres:gpu:1,shard:2`): (type or None, count) for each gpu entry."""
    gpus: list[tuple[str | None, int]] = []
    for entry in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = entry.strip().removeprefix("gres:").split(":")
        if parts[0] != "gpu":
            continue
        count = int(parts.pop()) if len(parts) > 1 and parts[-1].isdigit() else 1
        gpus.append((parts[1] if len(parts) > 1 else None, count))
    return gpus


def slurm_seconds(text: str) -> int | None:
    """A SLURM time limit in seconds (`30` minutes, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`); None
    for none (UNLIMITED, INFINITE) and for one it cannot read, which is no limit to check against."""
    found = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if found is None:
        return None
    days, *parts = found.groups()
    numbers = [int(part) for part in parts if part is not None]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = [*numbers, 0, 0][:3]
    else:  # M, M:S, H:M:S
        hours, minutes, seconds = [0, 0, *numbers][-3:] if len(numbers) == 3 else [0, *numbers, 0][:3]
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def cluster_says(args: list[str]) -> str | None:
    """What a SLURM command says of the cluster; None where the command is missing or does not answer: the check
    that needs it is then left to `sbatch --test-only`, never decided on a guess."""
    try:
        return slurm_output(args)
    except Silent:
        return None


def fields(line: str) -> dict[str, str]:
    """The `Key=value` fields of a line of `scontrol -o show ...` (a value with spaces is cut at its first)."""
    return dict(re.findall(r"(?:^|\s)(\w+)=(\S*)", line))


def check_partition(params: dict[str, Any], partitions: str, nodes: str | None) -> None:
    """Refuse, from the cluster's own description (`scontrol -o show partition`, and `scontrol -o show node` or
    None), a partition it lacks, a time limit above the partition's MaxTime (SLURM takes such a job and leaves it
    pending for ever, PartitionTimeLimit) and more GPUs than any node of the partition has. With no partition asked
    the default one is checked; a list of partitions is only checked to exist, as SLURM runs the job in any of
    them."""
    known = {f["PartitionName"]: f for f in map(fields, partitions.splitlines()) if "PartitionName" in f}
    asked = str(params["partition"]).split(",") if params.get("partition") else []
    for name in asked:
        if name not in known:  # SLURM's partition names are case-sensitive
            which = f"hydra.launcher.partition={params['partition']}" + (f": {name}" if len(asked) > 1 else "")
            raise UserError(
                f"{which} is not a partition of this cluster, whose partitions are {', '.join(known)}: choose one "
                f"of them; {NOT_SUBMITTED}"
            )
    default = [name for name, f in known.items() if f.get("Default") == "YES"]
    names = asked or default
    if len(names) != 1:
        return
    name = names[0]
    where = f"partition {name}" if asked else f"the default partition {name}"
    max_s = slurm_seconds(known[name].get("MaxTime", ""))
    if max_s is not None and int(params["timeout_min"]) * 60 > max_s:
        raise UserError(
            f"hydra.launcher.timeout_min={params['timeout_min']} is above {where}'s MaxTime of {max_s // 60} min: "
            f"lower timeout_min or choose another partition (sinfo shows them); {NOT_SUBMITTED}"
        )
    request = gpu_request(params)
    members = [f for f in map(fields, (nodes or "").splitlines()) if name in f.get("Partitions", "").split(",")]
    if request is None or not members:
        return
    asked_as, kind, count = request
    most = max(sum(n for t, n in gres_gpus(f.get("Gres", "")) if kind in (None, t)) for f in members)
    if count > most:
        gpus = f"{kind} GPUs" if kind else "GPUs"
        raise UserError(
            f"{asked_as} asks for more {gpus} than a node of {where} has ({most}): lower it or choose another "
            f"partition (sinfo -o '%P %G' shows their GPUs); {NOT_SUBMITTED}"
        )


def check_qos(params: dict[str, Any], user: str, associations: str, qos_names: Callable[[], str | None]) -> None:
    """Refuse a QOS that the user's association may not use (SLURM enforces its QOS list), from `sacctmgr -n -P show
    user USER withassoc format=Cluster,DefaultAccount,Account,Partition,QOS`: the association of the account asked
    for (else the user's default one) and of the partition asked for, else the account's general one. An unknown
    QOS is said as such where `qos_names` (`sacctmgr -n -P show qos format=Name`, asked only then) lists the
    cluster's. Nothing is decided without such an association, with its QOS list empty, or where the associations
    are of several clusters (which one SLURM applies is not known here)."""
    qos = str(params["qos"])
    rows = [line.split("|") for line in associations.splitlines() if line.count("|") == 4]
    if len({row[0] for row in rows}) != 1:
        return
    account = str(params.get("account") or rows[0][1])
    mine = {row[3]: row[4] for row in rows if row[2] == account.lower()}  # SLURM's QOS and accounts: lower case
    allowed = mine.get(str(params.get("partition") or ""), mine.get(""))
    if not allowed or qos.lower() in allowed.split(","):
        return
    may = f"user {user} may use in account {account} ({allowed.replace(',', ', ')})"
    names = qos_names()
    if names is not None and qos.lower() not in names.split():
        raise UserError(
            f"hydra.launcher.qos={qos} is not a QOS of this cluster: choose one that {may}; {NOT_SUBMITTED}"
        )
    raise UserError(
        f"hydra.launcher.qos={qos} is not a QOS that {may}: choose one of those, or ask the cluster's admins for "
        f"it; {NOT_SUBMITTED}"
    )


def check_cluster(params: dict[str, Any]) -> None:
    """Refuse what the cluster says it cannot run, from its own description (check_partition, check_qos): one call
    of each command for the whole sweep. A command that is missing or does not answer skips its check."""
    partitions = cluster_says(["scontrol", "-a", "-o", "show", "partition"])
    if partitions is not None:
        check_partition(params, partitions, cluster_says(["scontrol", "-o", "show", "node"]))
    if params.get("qos"):
        user = pwd.getpwuid(os.getuid()).pw_name  # SLURM knows the submitter by uid, not by $USER
        columns = "format=Cluster,DefaultAccount,Account,Partition,QOS"
        associations = cluster_says(["sacctmgr", "-n", "-P", "show", "user", user, "withassoc", columns])
        if associations is not None:
            names = ["sacctmgr", "-n", "-P", "show", "qos", "format=Name"]
            check_qos(params, user, associations, lambda: cluster_says(names))


def gpu_refusal(params: dict[str, Any], stderr: str) -> str | None:
    """Where sbatch refused the launcher's GPU request with a submit filter's message (its `sbatch: error:` lines
    before the last, which says that submission failed, that mention GPUs): that refusal, naming the request's
    other form (`gpus_per_node=N` or `gres=gpu:N`), which the site may take; else None."""
    lines = [line.removeprefix("sbatch: error: ") for line in stderr.strip().splitlines()]
    said = " ".join(line for line in lines[:-1] if re.search(r"gpu|gres", line, re.IGNORECASE))
    request = gpu_request(params)
    if not said or request is None:
        return None
    asked_as, kind, count = request
    if asked_as.startswith("hydra.launcher.gpus_per_node="):
        other = f"hydra.launcher.gres=gpu:{count} hydra.launcher.gpus_per_node=null"
    elif kind is None:
        other = f"hydra.launcher.gpus_per_node={count} hydra.launcher.gres=null"
    else:
        return None  # gpus_per_node takes a count, not a type
    return f"SLURM refused the GPU request {asked_as} ({said}): this cluster may take it as {other}"


# what SLURM's commands say when the controller does not answer: no verdict on the request
SILENT = ("socket timed out", "unable to contact slurm controller", "zero bytes were transmitted", "connection")
AGAIN = "nothing was submitted (try again once SLURM answers)"


def check_slurm_request(params: dict[str, Any]) -> None:
    """Check the time limit (check_slurm_timeout) and the GPU request's form (gpu_request), then the request against
    what the cluster says of itself (check_cluster: limits that sbatch takes and leaves pending for ever among them),
    then ask SLURM whether it could ever run a job with the launcher's resource request (`sbatch --test-only` on the
    batch script submitit would submit); an impossible request is a UserError quoting SLURM (naming the other form
    of a GPU request that a submit filter refused), and so is a controller that does not answer, said as such."""
    import submitit
    from submitit.slurm.slurm import _make_sbatch_string  # the script submitit itself would submit

    check_slurm_timeout(params)
    gpu_request(params)  # both forms at once is refused here
    if shutil.which("sbatch") is None:
        raise UserError("hydra/launcher=slurm needs SLURM's sbatch, which is not on this machine's PATH")
    check_cluster(params)
    with tempfile.TemporaryDirectory() as folder:
        executor = submitit.AutoExecutor(cluster="slurm", folder=folder)
        executor.update_parameters(**launcher_settings(params, "slurm"))
        script = Path(folder) / "test.sh"
        script.write_text(_make_sbatch_string(command="true", folder=folder, **executor._executor.parameters))
        try:
            proc = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise UserError(f"SLURM does not answer (sbatch --test-only: no answer in 60 s); {AGAIN}") from None
    if proc.returncode != 0:
        answer = " ".join(line.removeprefix("sbatch: error: ") for line in proc.stderr.strip().splitlines())
        if any(said in answer.lower() for said in SILENT):
            raise UserError(f"SLURM does not answer (sbatch --test-only: {answer}); {AGAIN}")
        refused = gpu_refusal(params, proc.stderr)
        if refused:
            raise UserError(f"{refused}; {NOT_SUBMITTED}")
        shown = ("partition", "nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node", "mem_gb", "timeout_min")
        request = ", ".join(f"{k}={params[k]}" for k in shown if params.get(k) is not None)
        raise UserError(
            f"SLURM cannot run this sweep's jobs ({request}): {answer}; "
            f"change hydra.launcher.* (e.g. cpus_per_task, mem_gb, gpus_per_node, partition); "
            f"nothing was submitted"
        )
