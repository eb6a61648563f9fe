"""A sweep checked as a whole in the launching process, before any job starts or is submitted: every job's
composed config, the data set (downloaded once, here, rather than by every job), and on SLURM the resource
request against the cluster (`sbatch --test-only`). A mistake is one UserError; nothing has been launched."""
from __future__ import annotations

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


def check_slurm_request(params: dict[str, Any]) -> None:
    """Ask SLURM whether it could ever run a job with the launcher's resource request (`sbatch --test-only`
    on the batch script submitit would submit); an impossible request is a UserError quoting SLURM."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from submitit.slurm.slurm import _make_sbatch_string  # the script submitit itself would submit

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
