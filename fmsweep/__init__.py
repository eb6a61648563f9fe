"""fmsweep: the Fashion-MNIST practical as Hydra sweeps."""
from fmsweep.checkpoint import load_model

__all__ = ["load_model"]
