"""Packing a sweep: the jobs that can train together, and a pack of them run as one job of the launcher.

In a sweep with pack=K, jobs that differ only in their seed, optimizer settings (not its class), regularization
(reg.l2; dropout rates where the model has no dropout), lr schedule, early stopping and augmentation settings (not
its kind) have the same tensor shapes: the sweeper groups them, in job order, into packs of at most K. A pack of two
or more is launched as one job of the launcher, in its own folder below the sweep dir (`packs/<first>-<last>`, no
.hydra/ there), whose `pack.yaml` holds every member's config as the sweep composed it. The pack job writes each
member's .hydra/ as Hydra would have, and trains the members together (train.run_pack), each into the job dir it
would have had alone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf, open_dict

from fmsweep import tracking
from fmsweep.files import atomic_write
from fmsweep.results.runs import HYDRA_DIR

log = logging.getLogger(__name__)
MANIFEST = "pack.yaml"
PACKS = "packs"


def pack_key(cfg: DictConfig) -> str:
    """What jobs of one pack must share: the whole run config but for the seed, the regularization, the schedule,
    early stopping, the optimizer's and the augmentation's settings (each member has its own; dropout rates reach
    the model config, which is kept)."""
    tree = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"]), resolve=True)
    assert isinstance(tree, dict)
    for key in ("seed", "reg", "scheduler", "early_stop"):
        tree.pop(key)
    for group in ("optimizer", "aug"):
        tree[group] = {k: v for k, v in tree[group].items() if k.startswith("_")}
    return json.dumps(tree, sort_keys=True)


def plan(configs: list[DictConfig]) -> list[list[int]]:
    """The sweep's jobs (by index) grouped into packs of at most `pack` jobs each, in job order: a job joins the
    newest pack of its kind while that has room. Jobs with pack=1 stay alone."""
    if all(cfg.pack == 1 for cfg in configs):
        return [[index] for index in range(len(configs))]
    packs: list[list[int]] = []
    open_pack: dict[str, list[int]] = {}
    for index, cfg in enumerate(configs):
        key = pack_key(cfg)
        members = open_pack.get(key)
        if members is not None and len(members) < cfg.pack:
            members.append(index)
            continue
        members = [index]
        packs.append(members)
        open_pack[key] = members
    return packs


def pack_dir_name(members: list[DictConfig]) -> str:
    """`packs/<first job number>-<last job number>`, `packs/<job number>` for a pack of one."""
    first, last = members[0].hydra.job.num, members[-1].hydra.job.num
    return f"{PACKS}/{first}" if first == last else f"{PACKS}/{first}-{last}"


def write_pack(sweep_dir: Path, members: list[DictConfig]) -> str:
    """Write the pack.yaml of a pack of jobs (their composed configs) into its folder below `sweep_dir`; return
    the folder's name."""
    name = pack_dir_name(members)
    folder = sweep_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = []
    for cfg in members:
        config = cast(dict[str, Any], OmegaConf.to_container(cfg))
        # resolved here: ${now:...} in the sweep dir would give another time in the job
        config["hydra"]["sweep"] = {"dir": str(sweep_dir), "subdir": str(cfg.hydra.sweep.subdir)}
        manifest.append({"name": str(cfg.hydra.sweep.subdir), "config": config})
    atomic_write(folder / MANIFEST, OmegaConf.to_yaml(OmegaConf.create({"members": manifest})))
    return name


def member_dirs(pack_dir: Path) -> list[Path]:
    """The job dirs of a pack's members."""
    members = OmegaConf.load(pack_dir / MANIFEST).members
    return [pack_dir.parent.parent / str(m.name) for m in members]


def pack_of(sweep_dir: Path, job_dir: Path) -> Path | None:
    """The folder of the pack that trained `job_dir`, if one did."""
    for manifest in sorted((sweep_dir / PACKS).glob(f"*/{MANIFEST}")):
        if job_dir in member_dirs(manifest.parent):
            return manifest.parent
    return None


def run(pack_dir: Path, hydra_cfg: DictConfig) -> float:
    """The pack job: write each member's .hydra/ as Hydra writes a job's (with this job's id, so that the sweep's
    tools find its launcher logs), train all members together, and return the best of their valid losses.
    A member that fails is marked failed in its job dir; then the pack job fails too, once the others are done.
    A cancel (SIGTERM) stops them all: each member not finished is then marked cancelled (fmsweep.__main__.task)."""
    from fmsweep import train
    from fmsweep.errors import Interrupted, TrainingDiverged
    from fmsweep.sweep.lock import RunDirBusy

    configs, dirs = [], []
    for member in OmegaConf.load(pack_dir / MANIFEST).members:
        cfg = cast(DictConfig, OmegaConf.create(OmegaConf.to_container(member.config)))
        run_dir = pack_dir.parent.parent / str(member.name)
        with open_dict(cfg):
            cfg.hydra.job.id = hydra_cfg.job.id
            cfg.hydra.runtime.output_dir = str(run_dir)
        hydra_dir = run_dir / HYDRA_DIR
        hydra_dir.mkdir(parents=True, exist_ok=True)
        task_cfg = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])
        OmegaConf.save(cfg.hydra.overrides.task, hydra_dir / "overrides.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": cfg.hydra}), hydra_dir / "hydra.yaml")
        OmegaConf.save(task_cfg, hydra_dir / "config.yaml")  # last: the live status sees the job start with it
        configs.append(task_cfg)
        dirs.append(run_dir)
    log.info("pack of %d jobs: %s", len(dirs), ", ".join(d.name for d in dirs))
    try:
        losses = train.run_pack(configs, dirs)
    except (Interrupted, RunDirBusy):
        raise  # saved, not failed: the members resume; or another process trains them: nothing to record
    except Exception as exc:
        for run_dir in dirs:
            tracking.record_failure(run_dir, exc)
        raise
    failed = [d.name for d, loss in zip(dirs, losses) if loss is None]
    if failed:
        raise TrainingDiverged(f"{len(failed)} of {len(dirs)} jobs of the pack diverged: {', '.join(failed)}")
    return min(loss for loss in losses if loss is not None)
