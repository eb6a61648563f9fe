"""`python -m fmsweep.ensemble <sweep dir or run dirs...>`: the best model of each run, on its own and all
together as one model that averages their softmax probabilities, on the test (or valid) split."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from fmsweep import checkpoint
from fmsweep.config import resolve_device
from fmsweep.data import load_fashion_mnist, split_indices
from fmsweep.errors import UserError
from fmsweep.files import atomic_write
from fmsweep.runs import ArgumentParser, Run, find_runs, is_run, markdown_table
from fmsweep.train import predict, scores

OUT_NAME = "ensemble.json"


@dataclass
class Member:
    """A run whose best model takes part, with its log-probabilities on the images `index` of the split."""

    run: Run
    name: str
    best_valid_loss: float
    index: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None
    loss: float = math.nan
    acc: float = math.nan


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m fmsweep.ensemble", description=__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="a sweep dir (every run below it) or run dirs")
    parser.add_argument("--split", choices=("test", "valid"), default="test",
                        help="test (default), or valid: each model on its own run's valid split, the average on "
                             "the images held out from every member")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="keep runs with this config group option (model=fc) or config value (reg.l2=0.001); "
                             "repeatable, all must hold")
    parser.add_argument("--top-k", type=int, metavar="K", help="keep the K runs of lowest best valid loss")
    parser.add_argument("--data-root", help="read Fashion-MNIST from here instead of each run's data.root")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, ...")
    parser.add_argument("--out", type=Path, help=f"file to write (default: {OUT_NAME} in the sweep dir)")
    args = parser.parse_args(argv)
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k {args.top_k}: expected a positive number of runs")
    return args


def same_value(value: Any, wanted: str) -> bool:
    """Whether a config value equals a command-line value (1e-3 == 0.001, true == True, null == None)."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() == {"null": "none"}.get(wanted.lower(), wanted.lower())
    if isinstance(value, (int, float)):
        try:
            return float(wanted) == float(value)
        except ValueError:
            return False
    return str(value) == wanted


def select(runs: list[Run], where: list[str]) -> list[Run]:
    """The runs that satisfy every KEY=VALUE condition (config group option, else config value)."""
    missing = object()
    for condition in where:
        key, sep, wanted = condition.partition("=")
        if not sep or not key:
            raise UserError(f"--where {condition!r}: expected KEY=VALUE, e.g. model=fc or reg.l2=0.001")
        values = [r.choices[key] if key in r.choices else OmegaConf.select(r.config, key, default=missing) for r in runs]
        if all(v is missing for v in values):
            raise UserError(f"--where {condition!r}: {key} is neither a config group nor a config key of these runs")
        runs = [r for r, v in zip(runs, values) if v is not missing and same_value(v, wanted)]
    return runs


def load_members(runs: list[Run], base: Path, top_k: int | None) -> tuple[list[Member], list[dict[str, str]]]:
    """Runs with a readable best checkpoint (the best `top_k` by valid loss), and the others with the reason."""
    members, skipped = [], []
    for run in runs:
        name = os.path.relpath(run.path, base)
        try:
            state = checkpoint.load(run.path / checkpoint.BEST)
        except UserError as exc:
            reason = f"no {checkpoint.BEST} ({run.status})" if not (run.path / checkpoint.BEST).exists() else str(exc)
            skipped.append({"run": name, "reason": reason})
            continue
        members.append(Member(run, name, float(state["metrics"]["valid_loss"])))
    if top_k is not None:
        keep = {id(m) for m in sorted(members, key=lambda m: m.best_valid_loss)[:top_k]}
        members = [m for m in members if id(m) in keep]
    return members, skipped


def data_root(members: list[Member], override: str | None) -> tuple[str, bool]:
    """The one data set all members read (root, download), or `override`."""
    if override is not None:
        return override, False
    roots = {(str(Path(m.run.config.data.root).expanduser().resolve()), bool(m.run.config.data.download)) for m in members}
    if len({root for root, _ in roots}) > 1:
        raise UserError(f"the runs read different data sets ({', '.join(sorted({r for r, _ in roots}))}); "
                        "pass --data-root to evaluate them all on one")
    return min(roots)


def evaluate_members(members: list[Member], split: str, root: str, download: bool, device: torch.device) -> dict[str, Any]:
    """Each member on its images of `split`, then the average of their probabilities on the common images."""
    train_x, train_y, test_x, test_y = load_fashion_mnist(root, download)
    images, labels = (test_x, test_y) if split == "test" else (train_x, train_y)
    for m in members:
        data = m.run.config.data
        m.index = (torch.arange(len(test_x)) if split == "test"
                   else split_indices(len(train_x), data.valid_ratio, data.subset, m.run.config.seed)[1])
        logits = predict(checkpoint.load_model(m.run.path, device), images[m.index].to(device)).float().cpu()
        m.loss, m.acc = scores(logits, labels[m.index])
        m.log_probs = logits.log_softmax(1)
    common = members[0].index
    for m in members[1:]:
        common = common[torch.isin(common, m.index)]
    average = {"loss": None, "acc": None, "images": len(common)}
    if len(common):
        position = torch.full((len(images),), -1, dtype=torch.long)
        stacked = []
        for m in members:
            position[m.index] = torch.arange(len(m.index))
            stacked.append(m.log_probs[position[common]])
        log_mean = torch.logsumexp(torch.stack(stacked), 0) - math.log(len(members))  # log of the mean probability
        y = labels[common]
        average["loss"] = F.nll_loss(log_mean, y).item()
        average["acc"] = (log_mean.argmax(1) == y).sum().item() / len(y)
    return average


def table(members: list[Member], average: dict[str, Any], split: str) -> str:
    """The practical's comparison: every model, then the averaged one."""
    rows = [[m.name, str(m.run.config.model._target_).rpartition(".")[2], str(len(m.index)), f"{m.loss:.4f}",
             f"{100 * m.acc:.2f}"] for m in members]
    avg_loss = "n/a" if average["loss"] is None else f"{average['loss']:.4f}"
    avg_acc = "n/a" if average["acc"] is None else f"{100 * average['acc']:.2f}"
    rows.append([f"average of {len(members)}", "ensemble", str(average["images"]), avg_loss, avg_acc])
    header = ["run", "model", "images", f"{split} loss", f"{split} acc (%)"]
    return markdown_table(header, rows, right={2, 3, 4})


def run(args: argparse.Namespace) -> str:
    """Evaluate the ensemble the arguments describe, write its JSON, return the text to print."""
    runs = list({r.path.resolve(): r for p in args.paths for r in find_runs(p)}.values())
    if len(args.paths) == 1 and not is_run(args.paths[0]):
        base = args.paths[0]
    else:
        base = Path(os.path.commonpath([r.path.resolve().parent for r in runs]))
    selected = select(runs, args.where)
    if not selected:
        raise UserError(f"no run matches {' and '.join(args.where)} (of {len(runs)} runs)")
    members, skipped = load_members(selected, base, args.top_k)
    if not members:
        raise UserError(f"none of the {len(selected)} selected runs has a usable {checkpoint.BEST}: "
                        + "; ".join(f"{s['run']}: {s['reason']}" for s in skipped))
    root, download = data_root(members, args.data_root)
    average = evaluate_members(members, args.split, root, download, resolve_device(args.device))
    out = args.out or base / OUT_NAME
    result = {
        "split": args.split,
        "members": [{"run": m.name, "path": str(m.run.path.resolve()), "overrides": m.run.overrides,
                     "model": m.run.config.model._target_, "images": len(m.index), "loss": m.loss, "acc": m.acc}
                    for m in members],
        "average": average,
        "selection": {"where": args.where, "top_k": args.top_k},
        "skipped": skipped,
    }
    atomic_write(out, json.dumps(result, indent=2) + "\n")
    lines = [f"Ensemble of {len(members)} best models, averaging their softmax probabilities ({args.split} split)", "",
             table(members, average, args.split), ""]
    if args.split == "valid":
        lines.append(f"Each model on its own run's valid split; the average on the {average['images']} images "
                     "held out from every member.")
    lines += [f"Skipped {s['run']}: {s['reason']}" for s in skipped]
    lines.append(f"Wrote {out}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point; a user error is one line on stderr and exit code 2."""
    try:
        print(run(parse_args(argv)))
    except UserError as exc:
        print(f"fmsweep: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
