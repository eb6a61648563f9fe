"""One training run: data, model, epochs with checkpointing and resume, final evaluation."""
from __future__ import annotations

import logging
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from fmsweep import checkpoint
from fmsweep.data import Splits, augment, prepare
from fmsweep.errors import UserError
from fmsweep.models import Classifier, l2_penalty, num_parameters
from fmsweep.tracking import Tracker

log = logging.getLogger(__name__)
EVAL_BATCH = 1024


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} asked for, but CUDA is not available on this machine (use device=auto or cpu)")
    return torch.device(name)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on uint8 images `x` with labels `y`."""
    model.eval()
    loss, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(x), EVAL_BATCH):
        logits = model(x[i : i + EVAL_BATCH])
        loss += F.cross_entropy(logits, y[i : i + EVAL_BATCH], reduction="sum")
        correct += (logits.argmax(1) == y[i : i + EVAL_BATCH]).sum()
    return loss.item() / len(x), correct.item() / len(x)


def summary_text(cfg: DictConfig, data: Splits, model: Classifier, optimizer: torch.optim.Optimizer) -> str:
    """The practical's run summary: command, data, transforms, normalization, model, optimizer."""
    aug = cfg.aug
    transforms = (
        f"RandomHorizontalFlip(p={aug.hflip}), RandomAffine(degrees={aug.degrees}, translate=({aug.translate}, {aug.translate}))"
        if aug.hflip or aug.degrees or aug.translate
        else "none"
    )
    return "\n".join(
        [
            "## Command",
            "python -m fmsweep " + shlex.join(sys.argv[1:]),
            "",
            "## Dataset",
            f"FashionMNIST from {Path(cfg.data.root).expanduser()}: train {len(data.train_y)}, "
            f"valid {len(data.valid_y)}, test {len(data.test_y)} (split seed {cfg.seed}, valid_ratio {cfg.data.valid_ratio})",
            f"Training augmentation: {transforms}",
            f"Normalization: {cfg.data.normalize} (statistics of the train split)",
            "",
            "## Model",
            str(model.net),
            f"Trainable parameters: {num_parameters(model)}",
            f"L2 penalty: {cfg.reg.l2}",
            "",
            "## Optimizer",
            str(optimizer),
            "",
        ]
    )


def run(cfg: DictConfig, run_dir: Path) -> float:
    """Train as configured in `run_dir` (resuming from its last.pt if any); return the best valid loss."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = prepare(cfg.data, cfg.seed, device)
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    model = Classifier(checkpoint.build_network(model_config), data.mean, data.std).to(device)
    optimizer = instantiate(cfg.optimizer)(model.parameters())

    start, best_loss, best_epoch, history, train_seconds = 0, math.inf, 0, [], 0.0
    if (run_dir / checkpoint.LAST).is_file():
        last = checkpoint.load(run_dir / checkpoint.LAST)
        if last["model_config"] != model_config:
            raise UserError(f"{run_dir} holds a run of another model ({last['model_config']}); use a new run dir")
        model.net.load_state_dict(last["state_dict"])
        optimizer.load_state_dict(last["optimizer"])
        start, best_loss, best_epoch = last["epoch"], last["best_loss"], last["best_epoch"]
        history, train_seconds = last["history"], last["train_seconds"]
        torch.set_rng_state(last["rng_cpu"])
        if device.type == "cuda" and last["rng_cuda"] is not None:
            torch.cuda.set_rng_state(last["rng_cuda"], device)
        log.info("Resuming from %s at epoch %d", run_dir / checkpoint.LAST, start)

    tracker = Tracker(run_dir, start)
    tracker.summary(summary_text(cfg, data, model, optimizer))
    normalization = {"kind": cfg.data.normalize, "mean": data.mean.cpu(), "std": data.std.cpu()}
    n_train, show_bar = len(data.train_y), sys.stdout.isatty()

    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        perm = torch.randperm(n_train, device=device)
        batches = tqdm(range(0, n_train, cfg.batch_size), desc=f"epoch {epoch}", leave=False, disable=not show_bar)
        for i in batches:
            idx = perm[i : i + cfg.batch_size]
            x, y = augment(data.train_x[idx].unsqueeze(1).float().div_(255), cfg.aug), data.train_y[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            objective = loss + cfg.reg.l2 * l2_penalty(model.net) if cfg.reg.l2 else loss
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            if show_bar and batches.n % 20 == 0:
                seen = min(i + cfg.batch_size, n_train)
                batches.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
        train_loss, train_acc = loss_sum.item() / n_train, correct.item() / n_train
        if not math.isfinite(train_loss):
            raise RuntimeError(f"training diverged: loss is {train_loss} in epoch {epoch}")
        valid_loss, valid_acc = evaluate(model, data.valid_x, data.valid_y)
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "valid_loss": valid_loss,
             "valid_acc": valid_acc, "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": seconds}
        )
        log.info(
            "epoch %d/%d  train loss %.4f acc %.4f | valid loss %.4f acc %.4f | %.2fs",
            epoch, cfg.epochs, train_loss, train_acc, valid_loss, valid_acc, seconds,
        )
        if valid_loss < best_loss:
            best_loss, best_epoch = valid_loss, epoch
            checkpoint.save(
                {"model_config": model_config, "state_dict": model.net.state_dict(), "normalization": normalization,
                 "epoch": epoch, "metrics": history[-1]},
                run_dir / checkpoint.BEST,
            )
        tracker.epoch(history)
        checkpoint.save(
            {"model_config": model_config, "state_dict": model.net.state_dict(), "optimizer": optimizer.state_dict(),
             "epoch": epoch, "best_loss": best_loss, "best_epoch": best_epoch, "history": history,
             "train_seconds": train_seconds, "rng_cpu": torch.get_rng_state(),
             "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            run_dir / checkpoint.LAST,
        )

    best = checkpoint.load_model(run_dir, device)
    valid_loss, valid_acc = evaluate(best, data.valid_x, data.valid_y)
    test_loss, test_acc = evaluate(best, data.test_x, data.test_y)
    metrics = {"status": "completed", "best_epoch": best_epoch, "valid_loss": valid_loss, "valid_acc": valid_acc,
               "test_loss": test_loss, "test_acc": test_acc, "num_params": num_parameters(model),
               "train_seconds": train_seconds, "epochs_run": len(history)}
    tracker.final(metrics)
    log.info("best epoch %d: valid loss %.4f acc %.4f | test loss %.4f acc %.4f",
             best_epoch, valid_loss, valid_acc, test_loss, test_acc)
    return valid_loss
