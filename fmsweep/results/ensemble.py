"""`python -m fmsweep.results.ensemble <sweep dir or run dirs...>`: the best model of each run, on its own and all
together as one model that averages their softmax probabilities, on the test (or valid) split: on images that
every member held out, at least MIN_IMAGES of them."""

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
from fmsweep.errors import ArgumentParser, UserError
from fmsweep.evaluate import predict, scores
from fmsweep.files import atomic_write
from fmsweep.results.runs import Run, find_runs, is_run, markdown_table

OUT_NAME = "ensemble.json"
# Fewest images an ensemble is scored on: with fewer, an accuracy near 90 % is uncertain by more than a percentage
# point (its standard error is about 1 point at 1000 images), which is the size of the gains an ensemble shows.
MIN_IMAGES = 1000
SPLIT_KEYS = ("seed", "data.valid_ratio", "data.subset")  # the config values that draw a run's valid split


@dataclass
class Member:
    """A run whose best model takes part, and its scores on the split."""

    run: Run
    name: str
    best_valid_loss: float
    loss: float = math.nan
    acc: float = math.nan


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="fmsweep ensemble", description=__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="a sweep dir (every run below it) or run dirs")
    parser.add_argument(
        "--split",
        choices=("test", "valid"),
        default="test",
        help="test (default), or valid: the valid split the members share (one seed, data.valid_ratio and data.subset)",
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs with this config group option (model=fc) or config value (reg.l2=0.001); "
        "repeatable, all must hold",
    )
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
        values = [
            r.choices[key] if key in r.choices else OmegaConf.select(r.config, key, default=missing) for r in runs
        ]
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
    roots = {
        (str(Path(m.run.config.data.root).expanduser().resolve()), bool(m.run.config.data.download)) for m in members
    }
    if len({root for root, _ in roots}) > 1:
        raise UserError(
            f"the runs read different data sets ({', '.join(sorted({r for r, _ in roots}))}); "
            "pass --data-root to evaluate them all on one"
        )
    return min(roots)


def split_images(members: list[Member], split: str, root: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (and labels) every member and the ensemble are scored on: the test split, or the valid split of
    every member. A UserError when the members' valid splits differ (each member trained on images that the others
    hold out, and the few held out from all score nothing) or the images are fewer than MIN_IMAGES."""
    train_x, train_y, test_x, test_y = load_fashion_mnist(root, download)
    if split == "test":
        images, labels = test_x, test_y
    else:
        valid = [
            split_indices(len(train_x), m.run.config.data.valid_ratio, m.run.config.data.subset, m.run.config.seed)[1]
            for m in members
        ]
        shared = set(valid[0].tolist()).intersection(*(v.tolist() for v in valid[1:]))
        if any(len(v) != len(shared) for v in valid):
            keys = [k for k in SPLIT_KEYS if len({str(OmegaConf.select(m.run.config, k)) for m in members}) > 1]
            raise UserError(
                f"--split valid: the members' valid splits differ (by {', '.join(keys)}), so only "
                f"{len(shared)} images are held out from all of them; use --split test, the split no "
                "member trained on (or members of one valid split, e.g. --where seed=N)"
            )
        images, labels = train_x[valid[0]], train_y[valid[0]]
    if len(labels) < MIN_IMAGES:
        remedy = (
            "use --split test"
            if split == "valid"
            else "pass --data-root with the full Fashion-MNIST test split (10,000 images)"
        )
        raise UserError(
            f"the {split} split holds only {len(labels)} images, fewer than the {MIN_IMAGES} an "
            f"ensemble's accuracy needs to mean something; {remedy}"
        )
    return images, labels


def evaluate_members(
    members: list[Member], images: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> dict[str, Any]:
    """Each member's loss and accuracy on the images, then the ensemble's: the mean of their probabilities."""
    log_probs = []
    for m in members:
        logits = predict(checkpoint.load_model(m.run.path, device), images.to(device)).float().cpu()
        m.loss, m.acc = scores(logits, labels)
        log_probs.append(logits.log_softmax(1))
    log_mean = torch.logsumexp(torch.stack(log_probs), 0) - math.log(len(members))  # log of the mean probability
    accuracy = (log_mean.argmax(1) == labels).sum().item() / len(labels)
    return {"loss": F.nll_loss(log_mean, labels).item(), "acc": accuracy, "images": len(labels)}


def table(members: list[Member], average: dict[str, Any], split: str) -> str:
    """The practical's comparison: every model, then their ensemble."""
    images = str(average["images"])
    rows = [
        [m.name, str(m.run.config.model._target_).rpartition(".")[2], images, f"{m.loss:.4f}", f"{100 * m.acc:.2f}"]
        for m in members
    ]
    rows.append(
        [f"ensemble of {len(members)}", "softmax mean", images, f"{average['loss']:.4f}", f"{100 * average['acc']:.2f}"]
    )
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
        raise UserError(
            f"none of the {len(selected)} selected runs has a usable {checkpoint.BEST}: "
            + "; ".join(f"{s['run']}: {s['reason']}" for s in skipped)
        )
    root, download = data_root(members, args.data_root)
    images, labels = split_images(members, args.split, root, download)
    average = evaluate_members(members, images, labels, resolve_device(args.device))
    out = args.out or base / OUT_NAME
    result = {
        "split": args.split,
        "members": [
            {
                "run": m.name,
                "path": str(m.run.path.resolve()),
                "overrides": m.run.overrides,
                "model": m.run.config.model._target_,
                "images": len(labels),
                "loss": m.loss,
                "acc": m.acc,
            }
            for m in members
        ],
        "average": average,
        "selection": {"where": args.where, "top_k": args.top_k},
        "skipped": skipped,
    }
    atomic_write(out, json.dumps(result, indent=2) + "\n")
    title = f"{len(members)} best models and their ensemble (the mean of their softmax probabilities)"
    lines = [f"{title}, {args.split} split", "", table(members, average, args.split), ""]
    if args.split == "valid":
        lines.append(
            "The valid split chose each member's best epoch (and the --top-k): the test split scores them "
            "without that advantage."
        )
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
