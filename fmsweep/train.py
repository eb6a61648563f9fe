"""Training: one run, or a pack of runs trained together in one process, each into its own run dir.

A run is a pack of one. `run_pack` builds each run's state (resumed from its last.pt if any) from one reading of
the data set, trains them (`train`), and ends each run with its final evaluation. Stacked (`stack`: by default on
CUDA) two or more runs of a pack train together, their networks one vmapped computation in one step; otherwise, and
always for a lone run, each trains through its own module: on the CPU one after another, which measured fastest
there (a run's weights stay in the caches), each bitwise what it would be alone. No step draws from the global RNG:
a run's data order and augmentation come from its own generator, its dropout masks from its own counter-based
streams (fmsweep.models.Dropout), so a run trains the same alone, stacked with any others, or resumed.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from fmsweep import checkpoint, gate, signals, tracking
from fmsweep.augment import FlipAffine
from fmsweep.config import device_name, resolve_device, validate
from fmsweep.data import Raw, Splits, load_fashion_mnist, prepare, raw_folder
from fmsweep.errors import Interrupted, TrainingDiverged, UserError
from fmsweep.evaluate import evaluate, predict, scores
from fmsweep.loader import Source, TrainLoader
from fmsweep.models import Classifier, l2_penalty, num_parameters, seed_dropout, seek_dropout
from fmsweep.results.runs import command, read_overrides
from fmsweep.schedule import Constant
from fmsweep.signals import StopRequest
from fmsweep.sweep import lock
from fmsweep.sweep.trial import Trial
from fmsweep.tracking import Tracker

log = logging.getLogger(__name__)


def build(cfg: DictConfig, data: Splits, scheduled: bool = False) -> tuple[Classifier, torch.optim.Optimizer]:
    """The run's model on the data's device (channels_last and cuDNN autotuning on CUDA), initialized from the run's
    seed (its dropout streams too), and its optimizer: the fused single-kernel implementation where there is one,
    on CUDA with graphs capturable=True (its step count on the device, as capture requires); `scheduled`: its lr a
    device tensor that the schedule sets in place every step."""
    device = data.train_x.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # cuDNN autotuning: each conv shape's fastest algorithm, found once
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    torch.manual_seed(cfg.seed)
    network = checkpoint.build_network(cast(dict[str, Any], OmegaConf.to_container(cfg.model, resolve=True)))
    seed_dropout(network, cfg.seed)
    model = Classifier(network, data.mean, data.std).to(device, memory_format=layout)  # type: ignore[call-overload]  # Module.to takes both at once; its overloads list them apart
    factory = instantiate(cfg.optimizer)
    accepted = inspect.signature(factory.func).parameters
    options: dict[str, Any] = {"fused": True} if "fused" in accepted else {}
    if device.type == "cuda" and cfg.cuda.graph and "capturable" in accepted:
        options["capturable"] = True
    if scheduled:
        options["lr"] = torch.tensor(float(cfg.optimizer.lr), device=device)
    return model, factory(model.parameters(), **options)


def describe(optimizer: torch.optim.Optimizer) -> str:
    """torch's text of an optimizer, with a setting held as a tensor (a scheduled run's lr) written as its number."""
    lines = [f"{type(optimizer).__name__} ("]
    for i, group in enumerate(optimizer.param_groups):
        lines.append(f"Parameter Group {i}")
        lines += [
            f"    {key}: {group[key].item() if torch.is_tensor(group[key]) else group[key]}"
            for key in sorted(group)
            if key != "params"
        ]
    return "\n".join([*lines, ")"])


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state but keep this run's implementation flags (fused, foreach, capturable):
    they say how this machine computes the step, not where training stands."""
    flags = [
        {k: group[k] for k in ("fused", "foreach", "capturable") if k in group} for group in optimizer.param_groups
    ]
    optimizer.load_state_dict(
        {**state, "param_groups": [{**saved, **own} for saved, own in zip(state["param_groups"], flags)]}
    )


class RunState:
    """Everything one run needs to continue exactly where it stopped, saved as its last.pt: model, optimizer, the
    generator of its data order and augmentation, how far it got (`epoch` finished, and within the next one
    `partial`: its dropout streams follow from that), the best epoch so far with its weights, the history and the
    training time.
    It also writes the run's other records, each after last.pt holds what it shows."""

    def __init__(self, cfg: DictConfig, run_dir: Path, device: torch.device, raw: Raw, label: str) -> None:
        self.cfg, self.run_dir, self.label = cfg, run_dir, label
        self.data = prepare(cfg.data, cfg.seed, device, raw)
        self.schedule = instantiate(cfg.scheduler)
        self.model, self.optimizer = build(cfg, self.data, scheduled=not isinstance(self.schedule, Constant))
        self.model_config = cast(dict[str, Any], OmegaConf.to_container(cfg.model, resolve=True))
        self.aug: FlipAffine = instantiate(cfg.aug)
        self.generator = torch.Generator(device).manual_seed(cfg.seed)
        self.epoch, self.best_loss, self.best_epoch = 0, math.inf, 0
        self.partial: dict[str, Any] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.stale = 0  # epochs since the valid loss last improved by more than early_stop.min_delta
        self.stopped_early: int | None = None  # the epoch at which early stopping ended the run
        self.pruned: int | None = None  # the epoch at which a search's pruner stopped the run
        if (run_dir / checkpoint.LAST).is_file():
            self.load(checkpoint.load(run_dir / checkpoint.LAST))
        self.tracker = Tracker(run_dir, self.summary(), self.history)
        self.trial = Trial.of(run_dir, cfg.epochs)  # the search trial this run is, if any

    @property
    def position(self) -> tuple[int, int]:
        """(finished epochs, batches done of the next one)."""
        return self.epoch, self.partial["next"] if self.partial else 0

    @property
    def done(self) -> bool:
        """Whether the run trained all it will: its epochs, or until early stopping."""
        stopped = self.stopped_early is not None or self.pruned is not None
        return (self.epoch >= self.cfg.epochs or stopped) and self.partial is None

    @property
    def finished(self) -> bool:
        return self.done and tracking.completed(self.run_dir)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model_config": self.model_config,
            "state_dict": self.model.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "partial": self.partial,
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "stale": self.stale,
            "stopped_early": self.stopped_early,
            "pruned": self.pruned,
        }

    def load(self, last: dict[str, Any]) -> None:
        """Continue from a last.pt; a best_model.pt that lags behind it (the last attempt stopped in between) is
        written again."""
        if last["model_config"] != self.model_config:
            raise UserError(f"{self.run_dir} holds a run of another model ({last['model_config']}); use a new run dir")
        if "generator" not in last:
            raise UserError(f"{self.run_dir / checkpoint.LAST} was written by an older fmsweep; use a new run dir")
        self.model.net.load_state_dict(last["state_dict"])
        load_optimizer_state(self.optimizer, last["optimizer"])
        self.generator.set_state(last["generator"])
        self.epoch, self.partial = last["epoch"], last["partial"]
        self.best_loss, self.best_epoch = last["best_loss"], last["best_epoch"]
        self.best_state, self.history, self.train_seconds = last["best_state"], last["history"], last["train_seconds"]
        self.stale, self.stopped_early, self.pruned = last["stale"], last["stopped_early"], last["pruned"]
        if self.best_state is not None and checkpoint.saved_epoch(self.run_dir / checkpoint.BEST) != self.best_epoch:
            self.save_best()

    def save(self) -> None:
        checkpoint.save(self.state_dict(), self.run_dir / checkpoint.LAST)

    def save_best(self) -> None:
        normalization = {"kind": self.cfg.data.normalize, "mean": self.data.mean.cpu(), "std": self.data.std.cpu()}
        checkpoint.save(
            {
                "model_config": self.model_config,
                "state_dict": self.best_state,
                "normalization": normalization,
                "epoch": self.best_epoch,
                "metrics": self.history[self.best_epoch - 1],
            },
            self.run_dir / checkpoint.BEST,
        )

    def summary(self) -> str:
        """The practical's run summary: command, data, transforms, normalization, model, optimizer, schedule."""
        cfg, data = self.cfg, self.data
        return "\n".join(
            [
                "## Command",
                command(self.run_dir),
                "",
                "## Dataset",
                f"FashionMNIST from {Path(cfg.data.root).expanduser()}: train {len(data.train_y)}, "
                f"valid {len(data.valid_y)}, test {len(data.test_y)} "
                f"(split seed {cfg.seed}, valid_ratio {cfg.data.valid_ratio})",
                f"Training augmentation: {self.aug}",
                f"Normalization: {cfg.data.normalize} (statistics of the train split)",
                "",
                "## Model",
                str(self.model.net),
                f"Trainable parameters: {num_parameters(self.model)}",
                f"L2 penalty: {cfg.reg.l2}",
                "",
                "## Optimizer",
                describe(self.optimizer),
                f"Learning-rate schedule: {self.schedule_text()}",
                "",
            ]
        )

    def schedule_text(self) -> str:
        lr = self.cfg.optimizer.lr
        if isinstance(self.schedule, Constant):
            return f"none (optimizer.lr={lr} throughout)"
        settings = ", ".join(f"{key}={value}" for key, value in self.cfg.scheduler.items() if key != "_target_")
        return f"{type(self.schedule).__name__} ({settings}) of optimizer.lr={lr}, stepped every batch"

    def source(self) -> Source:
        return Source(self.data.train_x, self.data.train_y, self.model.normalize, self.aug, self.generator)

    def end_epoch(self, losses: torch.Tensor, correct: float, seconds: float) -> None:
        """Evaluate on the valid split and commit the epoch: last.pt first, then best_model.pt if it improved,
        then history.csv and TensorBoard. A non-finite training loss fails the run instead."""
        epoch, n = self.epoch + 1, len(self.data.train_y)
        train_loss = losses.sum().item() / n
        if not math.isfinite(train_loss):
            bad = int(torch.nonzero(~torch.isfinite(losses))[0])
            kept = f"checkpoints of epoch {epoch - 1} kept in {self.run_dir}" if epoch > 1 else "no checkpoint yet"
            raise TrainingDiverged(
                f"training diverged: loss {losses[bad].item()} in epoch {epoch}, batch {bad + 1}/{len(losses)}; {kept}"
            )
        valid_loss, valid_acc = evaluate(self.model, self.data.valid_x, self.data.valid_y)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": correct / n,
            "valid_loss": valid_loss,
            "valid_acc": valid_acc,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "epoch_seconds": seconds,
        }
        self.epoch, self.partial, self.train_seconds = epoch, None, self.train_seconds + seconds
        self.history.append(row)
        log.info("%sepoch %d/%d  %s", self.label, epoch, self.cfg.epochs, tracking.epoch_line(row))
        improved = valid_loss < self.best_loss
        self.stale = 0 if valid_loss < self.best_loss - self.cfg.early_stop.min_delta else self.stale + 1
        if self.cfg.early_stop.patience and self.stale >= self.cfg.early_stop.patience and epoch < self.cfg.epochs:
            self.stopped_early = epoch
            log.info(
                "%searly stop after epoch %d: valid loss not %s for %d epochs",
                self.label,
                epoch,
                f"better by more than {self.cfg.early_stop.min_delta:g}",
                self.stale,
            )
        if improved:
            self.best_loss, self.best_epoch = valid_loss, epoch
            self.best_state = {key: value.detach().clone() for key, value in self.model.net.state_dict().items()}
        # the pruner judges what the trial would end with now: the objective of its best checkpoint so far
        best_row = self.history[self.best_epoch - 1] if self.best_epoch else row
        if self.trial is not None and epoch < self.cfg.epochs and self.trial.prune(epoch, best_row):
            self.pruned = epoch
            log.info("%spruned after epoch %d by the search's pruner", self.label, epoch)
        self.save()  # last.pt commits the epoch; every other file follows from it, so none is ever ahead of it
        if improved:
            self.save_best()
        self.tracker.epoch(self.history)

    def stopped_at(self) -> str:
        """Where a stop left the run, for its record: `in epoch 3 of 10; last.pt saved: resume to finish it`."""
        epochs = self.cfg.epochs
        if not (self.run_dir / checkpoint.LAST).is_file():
            return "before its first epoch; resume to run it"
        if self.done:
            where = f"after its last epoch ({self.epoch} of {epochs}), before its final evaluation"
        elif self.partial:
            where = f"in epoch {self.epoch + 1} of {epochs}"
        else:
            where = f"after epoch {self.epoch} of {epochs}"
        return f"{where}; last.pt saved: resume to finish it"

    def finish(self, stop: StopRequest) -> float:
        """Evaluate the best model on the valid and test splits, write metrics.json; return the best valid loss.
        A stop signal received before metrics.json is written stops the run instead (`stop.check`): it is not
        recorded completed. last.pt holds every epoch, so a resumed run only finishes."""
        stop.check()
        best = checkpoint.load_model(self.run_dir, self.data.test_x.device)
        valid_loss, valid_acc = evaluate(best, self.data.valid_x, self.data.valid_y)
        test_logits = predict(best, self.data.test_x)
        test_loss, test_acc = scores(test_logits, self.data.test_y)
        metrics = {
            "status": "pruned" if self.pruned else "completed",
            "best_epoch": self.best_epoch,
            "valid_loss": valid_loss,
            "valid_acc": valid_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "num_params": num_parameters(self.model),
            "train_seconds": self.train_seconds,
            "epochs_run": len(self.history),
            "stopped_early": self.stopped_early,
            "pruned": self.pruned,
        }
        self.tracker.predictions(self.data.test_x, self.data.test_y, test_logits.argmax(1), self.best_epoch)
        self.tracker.final(metrics, tracking.hparams(self.cfg, read_overrides(self.run_dir)), stop.check)
        log.info(
            "%sdone: best epoch %d of %d, test accuracy %.2f %% | results in %s",
            self.label,
            self.best_epoch,
            len(self.history),
            100 * test_acc,
            self.run_dir,
        )
        return valid_loss


class PackStep:
    """One optimization step of every run of a pack on its own batch: x (K, B, 1, 28, 28), y (K, B) in; each run's
    mean loss and number of correct predictions (K,) out, as device tensors (no host sync). Each run's objective
    is its cross-entropy plus its L2 penalty, and its own optimizer steps, as it would alone.

    With `stacked` the K networks run as one computation: torch.func's vmap over their parameters stacked along a
    new first dimension (linear layers become batched matmuls, convolutions grouped ones); the BatchNorm running
    statistics it updates are copied back to each network. Otherwise they run one after another.
    A run's lr schedule (fmsweep.schedule) sets its lr before each optimizer step, from the batches trained so far
    (`batches_done`, a device tensor that `seek` sets at each epoch's start and the step advances); so do the
    runs' dropout streams (fmsweep.models.Dropout), from counters of their own.
    On CUDA the forward runs under bf16 autocast (cuda.bf16), and with cuda.graph the step is captured once as a
    CUDA graph after GRAPH_WARMUP eager steps; every later full batch replays it (a smaller last batch runs eagerly).
    """

    GRAPH_WARMUP = 3

    def __init__(self, pack: list[RunState], stacked: bool, steps_per_epoch: int) -> None:
        assert not stacked or len(pack) > 1, "a lone run trains through its own module"
        cfg, device = pack[0].cfg, pack[0].generator.device
        self.nets = [run.model.net for run in pack]
        self.optimizers = [run.optimizer for run in pack]
        self.l2 = [run.cfg.reg.l2 for run in pack]
        self.batch_size, self.steps_per_epoch, self.epochs = cfg.batch_size, steps_per_epoch, cfg.epochs
        # the runs with a schedule: it sets their lr tensor from the batches trained, counted on the device
        self.schedules = [
            (run.schedule, float(run.cfg.optimizer.lr), run.optimizer.param_groups)
            for run in pack
            if not isinstance(run.schedule, Constant)
        ]
        self.batches_done = torch.zeros((), device=device)
        cuda = device.type == "cuda"
        self.autocast = torch.autocast("cuda", torch.bfloat16, enabled=cuda and cfg.cuda.bf16, cache_enabled=False)
        self.warmup = self.GRAPH_WARMUP if cuda and cfg.cuda.graph else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[torch.Tensor, ...] = ()  # the graph's inputs and outputs
        self.params = [dict(net.named_parameters()) for net in self.nets]
        self.buffers = [dict(net.named_buffers()) for net in self.nets]
        self.vmapped = None
        if stacked:
            # in training mode whatever mode the first network is in now (eval, after an epoch's evaluation)
            template = copy.deepcopy(self.nets[0]).to("meta").train()
            self.vmapped = torch.func.vmap(
                lambda params, buffers, x: torch.func.functional_call(template, (params, buffers), (x,)),
                randomness="error",
            )  # nothing in the step may draw from the global RNG

    def seek(self, batches: int) -> None:
        """Set the schedules and dropout streams to where runs that trained `batches` batches stand."""
        self.batches_done.fill_(batches)
        for net in self.nets:
            seek_dropout(net, batches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (K, B, 10) of each network on its batch."""
        if self.vmapped is None:
            return torch.stack([net(xk) for net, xk in zip(self.nets, x)])
        params = {name: torch.stack([p[name] for p in self.params]) for name in self.params[0]}
        buffers = {name: torch.stack([b[name] for b in self.buffers]) for name in self.buffers[0]}
        logits = self.vmapped(params, buffers, x)
        with torch.no_grad():  # the running statistics were updated in the stacked copies
            for name, copies in buffers.items():
                for own, copy_k in zip(self.buffers, copies.unbind()):
                    own[name].copy_(copy_k)
        return logits

    def eager(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step, op by op."""
        with self.autocast:
            logits = self.forward(x)
            losses = [F.cross_entropy(logits_k, y_k) for logits_k, y_k in zip(logits, y)]
        objective = cast(
            torch.Tensor,
            sum(loss + l2 * l2_penalty(net) if l2 else loss for loss, l2, net in zip(losses, self.l2, self.nets)),
        )
        for optimizer in self.optimizers:
            # Once captured, the graph's gradient buffers must stay the parameters' .grad: zero them in place.
            optimizer.zero_grad(set_to_none=self.graph is None)
        objective.backward()
        for schedule, lr, groups in self.schedules:
            factor = schedule.factor(self.batches_done, self.steps_per_epoch, self.epochs)
            for group in groups:
                group["lr"].copy_(lr * factor)
        for optimizer in self.optimizers:
            optimizer.step()
        if self.schedules:
            self.batches_done += 1
        return torch.stack(losses).detach(), (logits.argmax(-1) == y).sum(-1)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.warmup is None or y.shape[1] != self.batch_size:
            return self.eager(x, y)
        if self.warmup:  # as torch.cuda.graphs asks: warm up on a side stream (cuDNN autotuning, optimizer state)
            self.warmup -= 1
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                out = self.eager(x, y)
            torch.cuda.current_stream().wait_stream(stream)
            return out
        if self.graph is None:
            graph, static_x, static_y = torch.cuda.CUDAGraph(), x.clone(), y.clone()
            with torch.cuda.graph(graph):  # records the step without running it; the replay below runs it
                out = self.eager(static_x, static_y)
            self.graph, self.static = graph, (static_x, static_y, *out)
        static_x, static_y, losses, correct = self.static
        static_x.copy_(x)
        static_y.copy_(y)
        self.graph.replay()
        return losses, correct


def stacked(device: torch.device, cfg: DictConfig, size: int) -> bool:
    """Whether `size` runs of a pack train together as one vmapped computation: two or more, with stack=true, or
    stack=auto on CUDA. On the CPU (stack=auto) they train one after another: measured faster there than both the
    vmapped step and the runs' steps in turn. A lone run always trains through its own module."""
    return size > 1 and (cfg.stack is True or (cfg.stack == "auto" and device.type == "cuda"))


def train(
    pack: list[RunState], stop: StopRequest, until: tuple[int, int] | None = None
) -> dict[RunState, TrainingDiverged]:
    """Train the runs of `pack`, which stand at one position, to their last epoch, or only up to position `until`
    (where other runs of the pack stand); return those that diverged, each marked failed in its run dir, with
    their error.

    A stop signal (recorded by `stop`) saves every run's last.pt within the epoch, then stops (or lets submitit
    requeue the job)."""
    cfg, device, K = pack[0].cfg, pack[0].generator.device, len(pack)
    loader = TrainLoader([run.source() for run in pack], cfg.batch_size)
    step = PackStep(pack, stacked(device, cfg, K), loader.num_batches)
    show_bar = sys.stdout.isatty()
    for epoch in range(pack[0].epoch + 1, cfg.epochs + 1):
        for run in pack:
            run.model.train()
        if pack[0].partial:  # resume inside the epoch, where a stop saved it
            partials = cast(list[dict[str, Any]], [run.partial for run in pack])  # a stop saves each run's
            rng = loader.plan([partial["rng"] for partial in partials])
            first, elapsed = partials[0]["next"], partials[0]["seconds"]
            losses = torch.stack([partial["losses"] for partial in partials]).to(device)
            correct = torch.stack([partial["correct"] for partial in partials]).to(device)
        else:
            rng, first, elapsed = loader.plan(), 0, 0.0
            losses = torch.zeros(K, loader.num_batches, device=device)  # summed loss of each batch
            correct = torch.zeros(K, device=device)
        t0 = time.perf_counter() - elapsed
        step.seek((epoch - 1) * loader.num_batches + first)
        batches = tqdm(
            loader.batches(first),
            desc=f"epoch {epoch}",
            total=loader.num_batches,
            initial=first,
            leave=False,
            disable=not show_bar,
        )
        for b, x, y in batches:
            loss, n_correct = step(x, y)
            losses[:, b] = loss * y.shape[1]
            correct += n_correct
            if show_bar and b % 20 == 0:  # a host sync: only for the bar
                seen = min((b + 1) * cfg.batch_size, loader.n)
                batches.set_postfix(
                    loss=f"{losses.sum().item() / seen / K:.4f}", acc=f"{100 * correct.sum().item() / seen / K:.2f}%"
                )
            if stop.signum is not None or until == (epoch - 1, b + 1):
                for k, run in enumerate(pack):
                    run.partial = {
                        "next": b + 1,
                        "rng": rng[k],
                        "losses": losses[k].cpu(),
                        "correct": correct[k].cpu(),
                        "seconds": time.perf_counter() - t0,
                    }
                    run.save()
                if stop.signum is None:
                    return {}
                log.warning(
                    "Signal %d: saved %s in epoch %d after batch %d",
                    stop.signum,
                    ", ".join(str(run.run_dir / checkpoint.LAST) for run in pack),
                    epoch,
                    b + 1,
                )
                stop.handle()
        seconds, failed = time.perf_counter() - t0, {}
        for k, run in enumerate(pack):
            try:
                run.end_epoch(losses[k], correct[k].item(), seconds)
            except TrainingDiverged as exc:
                if run.label:  # a lone run's error is the command's error
                    log.error("%s%s", run.label, exc)
                tracking.record_failure(run.run_dir, exc)
                failed[run] = exc
        gate.wait([run.run_dir for run in pack], epoch, lambda: stop.signum is not None)  # tests only
        if failed or until == (epoch, 0) or any(run.done for run in pack):
            return failed
    return {}


def run_pack(cfgs: list[DictConfig], run_dirs: list[Path]) -> list[float | None]:
    """Train each config in its run dir (resuming from its last.pt), all together as one pack, holding each run
    dir's lock (fmsweep.sweep.lock) meanwhile; return each run's best valid loss, None for a run that diverged (a
    lone run raises its TrainingDiverged). The configs differ only where shapes and steps do not (see
    fmsweep.sweep.packing); a lone run is a pack of one. Each run ends with its final evaluation as soon as it trained
    its last epoch.

    A stop signal from the start until a run's metrics.json is written stops the runs not yet finished (raising
    Interrupted, see fmsweep.signals), each with its last.pt saved where it got (or none, before its first batch)."""
    for cfg in cfgs:
        validate(cfg)
    gate.wait(run_dirs, 0, lambda: bool(signals.pending))  # tests only: a run held at its start
    # the stop handlers first: a signal while the lock is taken or the data loads is not lost
    with StopRequest() as stop, lock.hold(run_dirs):  # one writer per run dir: a second process for one stops here
        return train_pack(cfgs, run_dirs, stop)


def device_text(device: torch.device) -> str:
    """The device as the run's start line names it: `cuda (NVIDIA H100 80GB HBM3)`, `cpu (AMD EPYC 7B13)`; on the
    CPU of a job that was given GPUs (CUDA_VISIBLE_DEVICES, as SLURM sets it for a GPU request) that CUDA cannot
    use, it says so: `cpu (...; CUDA_VISIBLE_DEVICES=0 set but CUDA is not available: training on the CPU)`."""
    text = f"{device} ({device_name(device)}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if device.type == "cpu" and visible.strip() and not torch.cuda.is_available():
        text += f"; CUDA_VISIBLE_DEVICES={visible} set but CUDA is not available: training on the CPU"
    return text + ")"


def train_pack(cfgs: list[DictConfig], run_dirs: list[Path], stop: StopRequest) -> list[float | None]:
    """run_pack, once its run dirs are its own; a stop names in its Interrupted where each unfinished run stood."""
    device = resolve_device(cfgs[0].device)
    raw = load_fashion_mnist(cfgs[0].data.root, cfgs[0].data.download)
    runs = [
        RunState(cfg, run_dir, device, raw, f"{run_dir.name}: " if len(cfgs) > 1 else "")
        for cfg, run_dir in zip(cfgs, run_dirs)
    ]
    for run in runs:
        log.info(
            "%srun dir %s | device %s | data %s: train %d, valid %d, test %d",
            run.label,
            run.run_dir,
            device_text(device),
            raw_folder(run.cfg.data.root),
            len(run.data.train_y),
            len(run.data.valid_y),
            len(run.data.test_y),
        )
        if run.finished:
            log.info("%s%s already finished its %d epochs: nothing to do", run.label, run.run_dir, run.cfg.epochs)
        elif run.position != (0, 0):
            log.info(
                "%sResuming from %s %s",
                run.label,
                run.run_dir / checkpoint.LAST,
                f"in epoch {run.epoch + 1} after batch {run.partial['next']}"
                if run.partial
                else f"after epoch {run.epoch}",
            )
    together = stacked(device, cfgs[0], len(runs))
    results: dict[Path, float | None] = {
        run.run_dir: cast(dict[str, Any], tracking.read_metrics(run.run_dir))["valid_loss"]
        for run in runs
        if run.finished
    }
    pending = [run for run in runs if run.run_dir not in results]
    try:
        while pending:
            stop.check()  # a stop while the data loaded or another run finished: nothing more is trained
            # Stacked, the runs train together, from one position: if an attempt stopped while saving them one by
            # one, those behind catch up first. Otherwise each trains alone, which keeps its weights in the CPU's
            # caches.
            lead = min(run.position for run in pending)
            group = [run for run in pending if run.position == lead][: None if together else 1]
            ahead = [run.position for run in pending if run.position > lead]
            failed = train(group, stop, min(ahead, default=None) if together else None)
            if failed and len(runs) == 1:
                raise failed[runs[0]]
            for run in group:
                if run in failed:
                    results[run.run_dir] = None
                elif run.done:
                    results[run.run_dir] = run.finish(stop)
            pending = [run for run in pending if run.run_dir not in results]
    except Interrupted as exc:
        exc.stopped = {run.run_dir: run.stopped_at() for run in pending if run.run_dir not in results}
        raise
    return [results[run.run_dir] for run in runs]


def run(cfg: DictConfig, run_dir: Path) -> float:
    """Train as configured in `run_dir` (resuming from its last.pt if any); return the best valid loss."""
    [valid_loss] = run_pack([cfg], [run_dir])
    assert valid_loss is not None  # a lone run that diverges raises TrainingDiverged
    return valid_loss
