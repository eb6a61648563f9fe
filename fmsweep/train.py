"""One training run: data, model, epochs with checkpointing and resume, final evaluation."""
from __future__ import annotations

import inspect
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

from fmsweep import checkpoint, tracking
from fmsweep.config import device_name, resolve_device, validate
from fmsweep.data import Splits, augment, prepare, raw_folder
from fmsweep.errors import TrainingDiverged, UserError
from fmsweep.models import Classifier, l2_penalty, num_parameters
from fmsweep.runs import read_overrides
from fmsweep.signals import StopRequest
from fmsweep.tracking import Tracker

log = logging.getLogger(__name__)
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


class TrainStep:
    """One optimization step on the training images at `idx`: gather them on the device, augment and normalize,
    forward, cross-entropy (plus the L2 penalty), backward, optimizer step. Returns the batch's mean loss and its
    number of correct predictions, as device tensors (no host sync).

    Without augmentation the training images are normalized once, here, and each step only gathers its batch.
    On CUDA the forward runs under bf16 autocast (cfg.cuda.bf16), and with cfg.cuda.graph the step is captured
    once as a CUDA graph after GRAPH_WARMUP eager steps; every later full batch replays it (a smaller last batch
    runs eagerly).
    """

    GRAPH_WARMUP = 3

    def __init__(self, model: Classifier, optimizer: torch.optim.Optimizer, data: Splits, cfg: DictConfig) -> None:
        self.model, self.optimizer, self.labels = model, optimizer, data.train_y
        self.aug = cfg.aug if cfg.aug.hflip or cfg.aug.degrees or cfg.aug.translate else None
        with torch.no_grad():
            self.images = data.train_x if self.aug else model.normalize(data.train_x)
        self.l2, self.batch_size = cfg.reg.l2, cfg.batch_size
        cuda = data.train_x.device.type == "cuda"
        self.autocast = torch.autocast("cuda", torch.bfloat16, enabled=cuda and cfg.cuda.bf16, cache_enabled=False)
        self.warmup = self.GRAPH_WARMUP if cuda and cfg.cuda.graph else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_idx: torch.Tensor | None = None  # the graph's input and outputs
        self.static_out: tuple[torch.Tensor, torch.Tensor] | None = None

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """The normalized (augmented) network input of the training images at `idx`."""
        x = self.images.index_select(0, idx)  # on CPU several times faster than images[idx]
        if self.aug is None:
            return x
        return self.model.normalize(augment(x.unsqueeze(1).float().div_(255), self.aug))

    def eager(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step, op by op."""
        y = self.labels.index_select(0, idx)
        with self.autocast:
            logits = self.model.net(self.inputs(idx))
            loss = F.cross_entropy(logits, y)
        objective = loss + self.l2 * l2_penalty(self.model.net) if self.l2 else loss
        # Once captured, the graph's gradient buffers must stay the parameters' .grad: zero them in place.
        self.optimizer.zero_grad(set_to_none=self.graph is None)
        objective.backward()
        self.optimizer.step()
        return loss.detach(), (logits.argmax(1) == y).sum()

    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.warmup is None or len(idx) != self.batch_size:
            return self.eager(idx)
        if self.warmup:  # as torch.cuda.graphs asks: warm up on a side stream (cuDNN autotuning, optimizer state)
            self.warmup -= 1
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                out = self.eager(idx)
            torch.cuda.current_stream().wait_stream(stream)
            return out
        if self.graph is None:
            self.static_idx = idx.clone()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # records the step without running it; the replay below runs it
                self.static_out = self.eager(self.static_idx)
            self.graph = graph
        self.static_idx.copy_(idx)
        self.graph.replay()
        return self.static_out


def setup(cfg: DictConfig, model_config: dict, data: Splits) -> tuple[Classifier, torch.optim.Optimizer, TrainStep]:
    """The model on the data's device (channels_last on CUDA), its optimizer and the train step of a run.

    The optimizer gets its fused single-kernel implementation where it has one, and on CUDA with graphs
    capturable=True (its step count on the device, as capture requires).
    """
    device = data.train_x.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = Classifier(checkpoint.build_network(model_config), data.mean, data.std).to(device, memory_format=layout)
    factory = instantiate(cfg.optimizer)
    accepted = inspect.signature(factory.func).parameters
    options = {"fused": True} if "fused" in accepted else {}
    if device.type == "cuda" and cfg.cuda.graph and "capturable" in accepted:
        options["capturable"] = True
    optimizer = factory(model.parameters(), **options)
    return model, optimizer, TrainStep(model, optimizer, data, cfg)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state but keep this run's implementation flags (fused, foreach, capturable):
    they say how this machine computes the step, not where training stands."""
    flags = [{k: group[k] for k in ("fused", "foreach", "capturable") if k in group} for group in optimizer.param_groups]
    optimizer.load_state_dict({**state, "param_groups": [{**saved, **own} for saved, own in zip(state["param_groups"], flags)]})


def run(cfg: DictConfig, run_dir: Path) -> float:
    """Train as configured in `run_dir` (resuming from its last.pt if any); return the best valid loss."""
    validate(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = prepare(cfg.data, cfg.seed, device)
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    model, optimizer, step = setup(cfg, model_config, data)

    start, best_loss, best_epoch, best_state, history, train_seconds, partial = 0, math.inf, 0, None, [], 0.0, None
    normalization = {"kind": cfg.data.normalize, "mean": data.mean.cpu(), "std": data.std.cpu()}

    def save_best() -> None:
        checkpoint.save({"model_config": model_config, "state_dict": best_state, "normalization": normalization,
                         "epoch": best_epoch, "metrics": history[best_epoch - 1]}, run_dir / checkpoint.BEST)

    if (run_dir / checkpoint.LAST).is_file():
        last = checkpoint.load(run_dir / checkpoint.LAST)
        if last["model_config"] != model_config:
            raise UserError(f"{run_dir} holds a run of another model ({last['model_config']}); use a new run dir")
        model.net.load_state_dict(last["state_dict"])
        load_optimizer_state(optimizer, last["optimizer"])
        start, best_loss, best_epoch = last["epoch"], last["best_loss"], last["best_epoch"]
        best_state = last.get("best_state")  # None in a last.pt written before it held the best weights
        history, train_seconds, partial = last["history"], last["train_seconds"], last["partial"]
        torch.set_rng_state(last["rng_cpu"])
        if device.type == "cuda" and last["rng_cuda"] is not None:
            torch.cuda.set_rng_state(last["rng_cuda"], device)
        if start >= cfg.epochs and partial is None and tracking.completed(run_dir):
            log.info("%s already finished its %d epochs: nothing to do", run_dir, cfg.epochs)
            return tracking.read_metrics(run_dir)["valid_loss"]
        log.info("Resuming from %s at epoch %d%s", run_dir / checkpoint.LAST, start,
                 f", batch {partial['next'] // cfg.batch_size}" if partial else "")
        if best_state is not None and checkpoint.saved_epoch(run_dir / checkpoint.BEST) != best_epoch:
            save_best()  # the last attempt stopped between writing last.pt and best_model.pt

    def save_last(epoch_done: int, partial: dict | None = None) -> None:
        """Everything needed to resume exactly; `partial` holds the state of an unfinished epoch."""
        checkpoint.save(
            {"model_config": model_config, "state_dict": model.net.state_dict(), "optimizer": optimizer.state_dict(),
             "epoch": epoch_done, "partial": partial, "best_loss": best_loss, "best_epoch": best_epoch,
             "best_state": best_state, "history": history, "train_seconds": train_seconds, "rng_cpu": torch.get_rng_state(),
             "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            run_dir / checkpoint.LAST,
        )

    tracker = Tracker(run_dir, summary_text(cfg, data, model, optimizer), history)
    n_train, show_bar = len(data.train_y), sys.stdout.isatty()
    log.info("run dir %s | device %s (%s) | data %s: train %d, valid %d, test %d", run_dir, device,
             device_name(device), raw_folder(cfg.data.root), n_train, len(data.valid_y), len(data.test_y))

    with StopRequest() as stop:
        for epoch in range(start + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            if partial:  # resume inside the epoch where a stop signal saved it
                perm, first, losses, correct = partial["perm"], partial["next"], partial["losses"], partial["correct"]
                t0 -= partial["seconds"]
                perm, losses, correct, partial = perm.to(device), losses.to(device), correct.to(device), None
            else:
                perm, first = torch.randperm(n_train, device=device), 0
                losses = torch.zeros(math.ceil(n_train / cfg.batch_size), device=device)  # summed loss of each batch
                correct = torch.zeros((), device=device)
            batches = tqdm(range(first, n_train, cfg.batch_size), desc=f"epoch {epoch}", leave=False, disable=not show_bar)
            for i in batches:
                idx = perm[i : i + cfg.batch_size]
                loss, n_correct = step(idx)
                losses[i // cfg.batch_size] = loss * len(idx)
                correct += n_correct
                if show_bar and batches.n % 20 == 0:
                    seen = min(i + cfg.batch_size, n_train)
                    batches.set_postfix(loss=f"{losses.sum().item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
                if stop.signum is not None:
                    save_last(epoch - 1, {"perm": perm.cpu(), "next": i + cfg.batch_size, "losses": losses.cpu(),
                                          "correct": correct.cpu(), "seconds": time.perf_counter() - t0})
                    log.warning("Signal %d: saved %s in epoch %d after batch %d",
                                stop.signum, run_dir / checkpoint.LAST, epoch, i // cfg.batch_size + 1)
                    stop.handle()
            train_loss, train_acc = losses.sum().item() / n_train, correct.item() / n_train
            if not math.isfinite(train_loss):
                bad = int(torch.nonzero(~torch.isfinite(losses))[0])
                kept = f"checkpoints of epoch {epoch - 1} kept in {run_dir}" if epoch > 1 else "no checkpoint yet"
                raise TrainingDiverged(
                    f"training diverged: loss {losses[bad].item()} in epoch {epoch}, batch {bad + 1}/{len(losses)}; {kept}"
                )
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
            improved = valid_loss < best_loss
            if improved:
                best_loss, best_epoch = valid_loss, epoch
                best_state = {key: value.detach().clone() for key, value in model.net.state_dict().items()}
            # last.pt commits the epoch; every other file follows from it, so none is ever ahead of it
            save_last(epoch)
            if improved:
                save_best()
            tracker.epoch(history)

    best = checkpoint.load_model(run_dir, device)
    valid_loss, valid_acc = evaluate(best, data.valid_x, data.valid_y)
    test_logits = predict(best, data.test_x)
    test_loss, test_acc = scores(test_logits, data.test_y)
    metrics = {"status": "completed", "best_epoch": best_epoch, "valid_loss": valid_loss, "valid_acc": valid_acc,
               "test_loss": test_loss, "test_acc": test_acc, "num_params": num_parameters(model),
               "train_seconds": train_seconds, "epochs_run": len(history)}
    tracker.predictions(data.test_x, data.test_y, test_logits.argmax(1), best_epoch)
    tracker.final(metrics, tracking.hparams(cfg, read_overrides(run_dir)))
    log.info("best epoch %d: valid loss %.4f acc %.4f | test loss %.4f acc %.4f",
             best_epoch, valid_loss, valid_acc, test_loss, test_acc)
    log.info("done: best epoch %d of %d, test accuracy %.2f %% | results in %s", best_epoch, len(history),
             100 * test_acc, run_dir)
    return valid_loss
