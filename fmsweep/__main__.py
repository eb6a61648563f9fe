"""`python -m fmsweep [overrides]`: the Hydra entry point of one training run (or of each job of a sweep)."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fmsweep import train
from fmsweep.errors import UserError


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Train one configuration in Hydra's output directory; return its best valid loss."""
    hydra_cfg = HydraConfig.get()
    try:
        return train.run(cfg, Path(hydra_cfg.runtime.output_dir))
    except UserError as exc:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # the launcher reports the failed job and the sweep goes on
        print(f"fmsweep: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
