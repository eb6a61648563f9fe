"""A model's predictions on a data split and their scores: the evaluation a run ends each epoch with, and the
ensemble's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

EVAL_BATCH = 1024


@torch.inference_mode()
def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of `model`, in eval mode, on uint8 images `x`, computed in batches of EVAL_BATCH."""
    model.eval()
    return torch.cat([model(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])


def scores(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `logits` for labels `y`."""
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).sum().item() / len(y)


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on uint8 images `x` with labels `y`."""
    return scores(predict(model, x), y)
