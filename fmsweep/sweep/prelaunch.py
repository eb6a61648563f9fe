"""A sweep checked as a whole in the launching process, before any job starts or is submitted: every job's
composed config, the data set (downloaded once, here, rather than by every job), and on SLURM the time limit
against the stop warning and the resource request against the cluster (`sbatch --test-only`). A mistake is one
UserError; nothing has been launched."""
from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.config_loader import ConfigLoader
from omegaconf import DictConfig, OmegaConf, open_dict

from fmsweep import data
from fmsweep.config import validate
from fmsweep.errors import UserError


def check_jobs(loader: ConfigLoader, config: DictConfig, job_overrides: Sequence[Sequence[str]],
               first_num: int = 0) -> list[DictConfig]:
    """Compose and validate the config of every job (numbered from `first_num`, as the launchers number them); the
    first bad one is a UserError naming the job as its dir is named. Then fetch the data set once for all jobs that
    may download it. Returns the composed configs."""
    configs, roots = [], set()
    for num, overrides in enumerate(job_overrides, first_num):
        cfg = loader.load_sweep_config(config, list(overrides))
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
        raise UserError(f"hydra.launcher.timeout_min={params['timeout_min']} leaves a job "
                        f"{max(timeout_s - delay_s, 0)} s of training before SLURM's stop warning, which comes "
                        f"hydra.launcher.signal_delay_s={delay_s} s before the time limit; it needs at least "
                        f"{least_s} s: set hydra.launcher.timeout_min={least_min} or more; nothing was submitted")


def check_slurm_request(params: dict[str, Any]) -> None:
    """Check the time limit (check_slurm_timeout), then ask SLURM whether it could ever run a job with the
    launcher's resource request (`sbatch --test-only` on the batch script submitit would submit); an impossible
    request is a UserError quoting SLURM."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from submitit.slurm.slurm import _make_sbatch_string  # the script submitit itself would submit

    check_slurm_timeout(params)
    if shutil.which("sbatch") is None:
        raise UserError("hydra/launcher=slurm needs SLURM's sbatch, which is not on this machine's PATH")
    # as hydra-submitit-launcher passes them: its generic keys as they are, the others prefixed with slurm_
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    settings = {k if k in generic else f"slurm_{k}": v for k, v in params.items()
                if k not in ("submitit_folder", "max_num_timeout")}
    with tempfile.TemporaryDirectory() as folder:
        executor = submitit.AutoExecutor(cluster="slurm", folder=folder)
        executor.update_parameters(**settings)
        script = Path(folder) / "test.sh"
        script.write_text(_make_sbatch_string(command="true", folder=folder, **executor._executor.parameters))
        proc = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        answer = " ".join(line.removeprefix("sbatch: error: ") for line in proc.stderr.strip().splitlines())
        shown = ("partition", "nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node", "mem_gb", "timeout_min")
        request = ", ".join(f"{k}={params[k]}" for k in shown if params.get(k) is not None)
        raise UserError(f"SLURM cannot run this sweep's jobs ({request}): {answer}; "
                        f"change hydra.launcher.* (e.g. cpus_per_task, mem_gb, gpus_per_node, partition); nothing was submitted")
