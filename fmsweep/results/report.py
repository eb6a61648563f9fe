"""`python -m fmsweep.results.report <sweep dir>`: the sweep's settings (jobs that differ only by seed) ranked by their
mean valid objective (a search's objective, else the valid loss), the best marked with its margin over the next (on
valid loss and on valid accuracy), the jobs still improving when they stopped flagged; every job; the best job's test
predictions; and for a search (hydra/sweeper=optuna) its trials by objective. Test figures are shown as each
setting's outcome, never used to rank. Writes report.md, report.csv (one row per setting: a column per swept key,
each metric's mean, std and n), jobs.csv (one row per job), report.png, best_samples.png and best_confusion.png
(where the best job has them), heatmap.png (a grid over two keys besides the seed) and search.png (a search) into
the sweep dir, and prints the markdown and the paths of the files written. Accuracies are fractions in the CSVs,
percent where people read them."""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from matplotlib.figure import Figure
from omegaconf import DictConfig, ListConfig, OmegaConf

from fmsweep.errors import ArgumentParser, UserError
from fmsweep.files import atomic_write
from fmsweep.results import figures
from fmsweep.results.runs import SEED_KEY, Run, command, find_runs, markdown_table, override_key
from fmsweep.sweep import space, storage
from fmsweep.tracking import CONFUSION_PNG, SAMPLES_PNG

METRICS = ("valid_loss", "valid_acc", "test_loss", "test_acc")
MISSING = "–"
DEFAULT_OBJECTIVE = ("valid_loss", True)  # a grid's ranking: (metric, minimized)
IMPROVING_SHARE = 0.1  # a job whose best epoch lies in this last share of its epochs (at least its last) still improved
CLEAR, NOISE = 2.0, 1.0  # margins in standard errors: over CLEAR is a clear lead, under NOISE within noise


def job_id(run: Run) -> str:
    """Hydra's job number, prefixed by its sweep's folder when the report spans several sweeps."""
    parent = os.path.dirname(run.name)
    num = str(run.num) if run.num is not None else os.path.basename(run.name)
    return os.path.join(parent, num) if parent else num


def metric_text(key: str, value: float) -> str:
    """Losses with 4 decimals, accuracies in percent with 2."""
    return f"{100 * value:.2f}" if key.endswith("acc") else f"{value:.4f}"


def swept_values(overrides: list[str], keys: list[str]) -> dict[str, str]:
    """The value each of `keys` has in `overrides` ('' where the job leaves it at its default)."""
    values = {override_key(o): o.partition("=")[2] for o in overrides}
    return {key: values.get(key, "") for key in keys}


def swept_keys(runs: list[Run], seed: bool) -> list[str]:
    """The keys whose overrides differ between jobs (the seed among them only if `seed`), in job dir order."""
    shared = set(shared_overrides(runs))
    keys = dict.fromkeys(override_key(o) for run in runs for o in run.overrides if o not in shared)
    return [key for key in keys if seed or key != SEED_KEY]


def job_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One CSV row per job: its number, a column per swept key, its overrides, status and final metrics ('' where
    it has none)."""
    keys, rows = swept_keys(runs, seed=True), []
    for run in runs:
        m = run.metrics
        row = {
            "job": job_id(run),
            **swept_values(run.overrides, keys),
            "overrides": ",".join(run.overrides),
            "setting": run.setting,
            "status": run.status,
            "path": run.name,
        }
        row.update({k: m.get(k, "") for k in ("best_epoch", *METRICS, "num_params", "train_seconds", "epochs_run")})
        rows.append(row)
    return rows


def job_table(runs: list[Run], rows: list[dict[str, Any]]) -> str:
    """The jobs in job order, each named by the overrides it does not share with every other job (floats
    rounded for people)."""
    shared = shared_overrides(runs)
    header = [
        "job",
        "overrides",
        "status",
        "best epoch",
        "valid loss",
        "valid acc (%)",
        "test loss",
        "test acc (%)",
        "params",
        "train s",
    ]
    lines = []
    for run, r in zip(runs, rows):
        metrics = [metric_text(k, r[k]) if r[k] != "" else MISSING for k in METRICS]
        own = ",".join(space.display_overrides([o for o in run.overrides if o not in shared]))
        lines.append(
            [
                r["job"],
                own or "(shared overrides only)",
                r["status"],
                str(r["best_epoch"]) or MISSING,
                *metrics,
                str(r["num_params"]) or MISSING,
                f"{r['train_seconds']:.1f}" if r["train_seconds"] != "" else MISSING,
            ]
        )
    return markdown_table(header, lines, right={3, 4, 5, 6, 7, 8, 9})


def still_improving(run: Run) -> bool:
    """Whether a completed job had its best valid loss in its last epochs (the last IMPROVING_SHARE of those it ran,
    at least the last one) without early stopping ending it: it was still improving when its epochs ran out."""
    if not run.completed or run.metrics.get("stopped_early") is not None:
        return False
    last = int(run.metrics["epochs_run"])
    return int(run.metrics["best_epoch"]) > last - max(1, int(IMPROVING_SHARE * last))


def setting_stats(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """Per setting (overrides without the seed), in job order: job count, completed count n, how many of those were
    still improving, and per metric the (mean, sample std) over its completed jobs (std 0 when n is 1)."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.setting].append(run)
    stats = {}
    for setting, group in groups.items():
        done = [r for r in group if r.completed]
        entry: dict[str, Any] = {"jobs": len(group), "n": len(done), "improving": sum(map(still_improving, done))}
        for key in METRICS:
            values = [float(r.metrics[key]) for r in done]
            entry[key] = (
                (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
            )
        stats[setting] = entry
    return stats


def ranked(stats: dict[str, dict[str, Any]], objective: str, minimize: bool) -> list[str]:
    """The settings best first by their mean `objective` over completed jobs; those without one last, in job
    order. Test figures play no part."""

    def key(setting: str) -> tuple[int, float]:
        value = stats[setting][objective]
        return (1, 0.0) if value is None else (0, value[0] if minimize else -value[0])

    return sorted(stats, key=key)


def margin(stats: dict[str, dict[str, Any]], order: list[str], objective: str) -> str | None:
    """How far the best setting is ahead of the next on the objective's mean, and in standard errors of that
    difference where seeds repeat both; None with fewer than two ranked settings."""
    first, second = (stats[s] for s in order[:2]) if len(order) > 1 else (None, None)
    if first is None or second is None or first[objective] is None or second[objective] is None:
        return None
    gap = abs(first[objective][0] - second[objective][0])
    text = f"{metric_text(objective, gap)}{' points' if objective.endswith('acc') else ''}"
    error = standard_error(first, second, objective)
    return text + (f" ({gap / error:.1f} standard errors)" if error else "")


def standard_error(first: dict[str, Any], second: dict[str, Any], key: str) -> float | None:
    """The standard error of the difference of two settings' means of `key`; None unless seeds repeat both and
    they spread."""
    if first["n"] < 2 or second["n"] < 2:
        return None
    return math.sqrt(first[key][1] ** 2 / first["n"] + second[key][1] ** 2 / second["n"]) or None


def lead(stats: dict[str, dict[str, Any]], order: list[str], key: str, minimize: bool) -> tuple[float, float | None]:
    """How far the best setting is ahead of the next on the mean `key` (negative where the next is better), and that
    gap in standard errors of the difference (None without repeated seeds)."""
    first, second = stats[order[0]], stats[order[1]]
    gap = (second[key][0] - first[key][0]) * (1 if minimize else -1)
    error = standard_error(first, second, key)
    return gap, None if error is None else gap / error


def margins_line(stats: dict[str, dict[str, Any]], order: list[str], labels: dict[str, str]) -> str:
    """The best setting against the next on valid loss and on valid accuracy, and whether the two disagree: when the
    next setting is better on one of them, or the lead is clear (over CLEAR standard errors) on one and within noise
    (under NOISE) on the other. '' with fewer than two ranked settings."""
    if len(order) < 2 or any(stats[s][key] is None for s in order[:2] for key in ("valid_loss", "valid_acc")):
        return ""
    leads = {key: lead(stats, order, key, key == "valid_loss") for key in ("valid_loss", "valid_acc")}
    parts = []
    for key, (gap, errors) in leads.items():
        what = key.replace("_", " ")
        if gap == 0:
            parts.append(f"the same {what}")
            continue
        word = "higher" if (gap > 0) == key.endswith("acc") else "lower"
        amount = f"{metric_text(key, abs(gap))}{' points' if key.endswith('acc') else ''}"
        parts.append(f"{what} {amount} {word}" + ("" if errors is None else f" ({abs(errors):.1f} standard errors)"))
    text = f"Against the next setting, {labels[order[1]]}: {parts[0]}, {parts[1]}."
    (loss, loss_errors), (acc, acc_errors) = leads.values()
    if loss * acc < 0:
        worse = "valid loss" if loss < 0 else "valid acc"
        return text + f" The two disagree: the next setting is better on {worse}."
    if loss_errors is not None and acc_errors is not None:
        for (clear, errors), (noisy, other) in (
            (("valid loss", loss_errors), ("valid acc", acc_errors)),
            (("valid acc", acc_errors), ("valid loss", loss_errors)),
        ):
            if errors > CLEAR and other < NOISE:
                return text + (
                    f" The two disagree: the lead is clear on {clear} (over {CLEAR:g} standard errors) but "
                    f"within noise on {noisy} (under {NOISE:g})."
                )
    return text


def improving_line(runs: list[Run]) -> str:
    """How many completed jobs were still improving when their epochs ran out (still_improving), and what to do about
    it; '' without a completed job."""
    done = [run for run in runs if run.completed]
    if not done:
        return ""
    late = [run for run in done if still_improving(run)]
    near = any(max(1, int(IMPROVING_SHARE * run.metrics["epochs_run"])) > 1 for run in done)
    where = f"in the last {100 * IMPROVING_SHARE:.0f} % of their epochs" if near else "at their last epoch"
    if not late:
        return (
            f"No completed job ({len(done)}) had its best valid loss {where.replace('their', 'its')}: each had "
            "stopped improving on validation before its epochs ran out."
        )
    its, were = ("its", "it was") if len(late) == 1 else ("their", "they were")
    epochs = 2 * max(int(run.metrics["epochs_run"]) for run in late)
    return (
        f"{len(late)} of {len(done)} completed job{'s' if len(done) > 1 else ''} had {its} best valid loss "
        f"{where.replace('their', its)}: {were} still improving; train longer (epochs={epochs})."
    )


def setting_table(stats: dict[str, dict[str, Any]], order: list[str], labels: dict[str, str]) -> str:
    """The settings in rank order, named as the figure names them; last, how many of each one's completed jobs were
    still improving."""
    header = ["rank", "setting", "n", "valid loss", "valid acc (%)", "test loss", "test acc (%)", "still improving"]
    lines = []
    for rank, setting in enumerate(order, 1):
        s = stats[setting]
        n = str(s["n"]) if s["n"] == s["jobs"] else f"{s['n']} of {s['jobs']}"
        cells = []
        for key in METRICS:
            if s[key] is None:
                cells.append(MISSING)
            elif s["n"] == 1:
                cells.append(metric_text(key, s[key][0]))
            else:
                cells.append(f"{metric_text(key, s[key][0])} ± {metric_text(key, s[key][1])}")
        place = MISSING if s["n"] == 0 else f"{rank} (best)" if rank == 1 else str(rank)
        lines.append([place, labels[setting], n, *cells, f"{s['improving']} of {s['n']}" if s["n"] else MISSING])
    return markdown_table(header, lines, right={0, 2, 3, 4, 5, 6, 7})


def setting_rows(runs: list[Run], stats: dict[str, dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """One CSV row per setting in rank order: rank, a column per swept key, job count, n (completed jobs), how many
    of them were still improving, and each metric's mean and std."""
    keys = swept_keys(runs, seed=False)
    first = {run.setting: run for run in reversed(runs)}
    rows = []
    for rank, setting in enumerate(order, 1):
        s = stats[setting]
        row: dict[str, Any] = {
            "rank": rank if s["n"] else "",
            **swept_values(first[setting].overrides, keys),
            "setting": setting,
            "jobs": s["jobs"],
            "n": s["n"],
            "still_improving": s["improving"],
        }
        for key in METRICS:
            row[f"{key}_mean"], row[f"{key}_std"] = s[key] if s[key] is not None else ("", "")
        rows.append(row)
    return rows


def shared_overrides(runs: list[Run]) -> list[str]:
    """The overrides that every job has: the figure states them once, in its title, instead of in every label."""
    common = set.intersection(*(set(run.overrides) for run in runs))
    return [o for o in runs[0].overrides if o in common]


def group_values(run: Run, override: str) -> str:
    """`override` followed by the values in force of the config group option it chooses, as the run's config has
    them: `reg=l2 (l2=0.001)`. Shown are the option's own numbers and words that are not zero, null or false and
    that no override of the job sets itself; lists (a model's layers) and values it takes from another group
    (interpolations, shown with that group) are left to the option's name. Any other override as it is."""
    group = override_key(override)
    node = OmegaConf.select(run.config, group, default=None) if group in run.choices else None
    if not isinstance(node, DictConfig):
        return override
    overridden = {override_key(o) for o in run.overrides}
    values = [
        f"{key}={space.readable(node[key])}"
        for key in cast("Iterable[str]", node)
        if not str(key).startswith("_")
        and f"{group}.{key}" not in overridden
        and not OmegaConf.is_interpolation(node, key)
        and not isinstance(node[key], (DictConfig, ListConfig))
        and node[key] not in (0, None, False)
    ]
    return f"{override} ({', '.join(values)})" if values else override


def label(run: Run, shared: list[str]) -> str:
    """The job's setting as the figure labels it: its overrides without the seed and the shared ones, floats
    rounded for people, each config group option with the values it sets (group_values)."""
    own = [o for o in run.overrides if override_key(o) != SEED_KEY and o not in shared]
    return ",".join(group_values(run, o) for o in space.display_overrides(own)) or (
        "(shared overrides only)" if shared else "(defaults)"
    )


def figure(
    runs: list[Run], stats: dict[str, dict[str, Any]], order: list[str], objective: str, minimize: bool
) -> Figure:
    """report.png: the objective per epoch of every job by setting and seed; each setting's mean objective,
    ranked."""
    shared = shared_overrides(runs)
    labels = {run.setting: label(run, shared) for run in runs}
    curves: dict[str, list[tuple[str, list[float], list[float]]]] = defaultdict(list)
    for run in runs:
        history = run.history()
        if history:
            seed = swept_values(run.overrides, [SEED_KEY])[SEED_KEY] or str(run.config.get(SEED_KEY, ""))
            curves[labels[run.setting]].append((seed, [h["epoch"] for h in history], [h[objective] for h in history]))
    points = {labels[k]: (*stats[k][objective], stats[k]["n"]) for k in order if stats[k][objective] is not None}
    return figures.sweep([labels[k] for k in order], dict(curves), points, objective, minimize, shared)


def value_order(value: str) -> tuple[int, float, str]:
    """Swept values in order on a heatmap's axis: numbers by size, then words (a key left at its default, '', first)."""
    try:
        return 0, float(value), ""
    except ValueError:
        return 1, 0.0, value


def heatmap(
    runs: list[Run], stats: dict[str, dict[str, Any]], order: list[str], objective: str, minimize: bool
) -> Figure | None:
    """heatmap.png for a grid over exactly two keys besides the seed: each combination's mean objective, the best
    marked. None for any other sweep (one key or three, a search's scattered values)."""
    keys = swept_keys(runs, seed=False)
    if len(keys) != 2:
        return None
    cell = {run.setting: tuple(swept_values(run.overrides, keys).values()) for run in runs}
    rows, columns = (sorted({c[k] for c in cell.values()}, key=value_order) for k in range(2))
    if len(set(cell.values())) != len(cell) or len(cell) != len(rows) * len(columns):
        return None
    means: list[list[float | None]] = [[None] * len(columns) for _ in rows]
    for setting, (row, column) in cell.items():
        value = stats[setting][objective]
        means[rows.index(row)][columns.index(column)] = None if value is None else value[0]
    best = order[0] if stats[order[0]][objective] is not None else None
    marked = None if best is None else (rows.index(cell[best][0]), columns.index(cell[best][1]))
    shown = [[v or "(default)" for v in values] for values in (rows, columns)]
    return figures.heatmap(keys, shown, means, marked, objective, minimize)


def best_job(runs: list[Run], order: list[str], objective: str, minimize: bool) -> Run | None:
    """The best setting's best completed job on the objective (validation): the job whose test predictions the
    report shows. None while the best setting has no completed job."""
    done = [run for run in runs if order and run.setting == order[0] and run.completed]
    if not done:
        return None
    return min(done, key=lambda run: run.metrics[objective] * (1 if minimize else -1))


def best_job_section(sweep_dir: Path, run: Run, shared: list[str], objective: str) -> tuple[str, list[Path]]:
    """Copy the best job's samples.png and confusion.png next to the report as best_samples.png and
    best_confusion.png; return the markdown that shows them (or says which it lacks) and the files written."""
    own = ",".join(space.display_overrides([o for o in run.overrides if o not in shared]))
    lines = [
        "## Best job",
        "",
        f"Job {job_id(run)}{f' ({own})' if own else ''}, the best setting's best job on "
        f"{objective.replace('_', ' ')}: its predictions on the test split (shown, never used to choose).",
        "",
    ]
    written, absent = [], []
    for name, alt in (
        (SAMPLES_PNG, "test images with their predicted (true) class, red when wrong"),
        (CONFUSION_PNG, "test confusion matrix: true class by row, predicted by column"),
    ):
        try:
            image = (run.path / name).read_bytes()
        except FileNotFoundError:
            absent.append(name)
            continue
        atomic_write(sweep_dir / f"best_{name}", image)
        written.append(sweep_dir / f"best_{name}")
        lines += [f"![{alt}](best_{name})", ""]
    if absent:
        lines += [
            f"The job has no {' and no '.join(absent)} (a run from before fmsweep wrote them): see its test "
            "images in TensorBoard.",
            "",
        ]
    return "\n".join(lines), written


def objective_of(sweep_dir: Path) -> tuple[str, bool]:
    """What ranks the settings: a search's objective and direction, else the valid loss, minimized."""
    study = storage.find_study(sweep_dir)
    if study is None:
        return DEFAULT_OBJECTIVE
    import optuna

    return study.user_attrs["objective"], study.direction == optuna.study.StudyDirection.MINIMIZE


def search_section(sweep_dir: Path, runs: list[Run]) -> tuple[str, Figure] | None:
    """For a search's sweep dir: its trials sorted by objective (pruned and failed ones after), with their searched
    values and status, the best trial and the command that trains it again, and search.png."""
    study = storage.find_study(sweep_dir)
    if study is None:
        return None
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    objective, minimize = study.user_attrs["objective"], study.direction == optuna.study.StudyDirection.MINIMIZE
    by_num = {run.num: run for run in runs if run.path.parent == sweep_dir}
    trials = study.trials
    names = list(dict.fromkeys(name for t in trials for name in t.distributions))
    log_scale = {
        name
        for t in trials
        for name, d in t.distributions.items()
        if isinstance(d, (FloatDistribution, IntDistribution)) and d.log
    }

    def value(t: optuna.trial.FrozenTrial) -> float | None:
        if t.value is not None:
            return t.value
        return t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None

    def order(t: optuna.trial.FrozenTrial) -> tuple[int, float]:
        v = t.value if t.value is not None else math.inf
        return (0, v if minimize else -v) if t.state.name == "COMPLETE" else (1, t.number)

    rows = [
        [
            str(t.number),
            by_num[t.number].status if t.number in by_num else t.state.name.lower(),
            metric_text(objective, t.value) if t.value is not None else MISSING,
            *(space.readable(t.params[n]) if n in t.params else MISSING for n in names),
        ]
        for t in sorted(trials, key=order)
    ]
    lines = [
        "## Search",
        "",
        f"{len(trials)} trials, objective {objective} ({'minimized' if minimize else 'maximized'}), "
        "best first; a pruned trial stopped at the epoch its status names, with its last reported value.",
        "",
        markdown_table(["trial", "status", figures.axis_label(objective), *names], rows, right={0, 2}),
        "",
    ]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        unit = " %" if objective.endswith("acc") else ""
        lines += [f"Best: trial {best.number}, {objective} {metric_text(objective, best.value)}{unit}."]
        if best.number in by_num:
            lines[-1] += " To train it again:"
            lines += ["", "```bash", command(by_num[best.number].path), "```"]
        lines += [""]
    lines += ["![objective against each searched value; best so far against trial number](search.png)", ""]
    points = [(t.number, t.state.name.lower(), value(t), dict(t.params)) for t in trials]
    return "\n".join(lines), figures.search(objective, points, log_scale, minimize)


def csv_text(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def best_line(stats: dict[str, dict[str, Any]], order: list[str], labels: dict[str, str], objective: str) -> str:
    """One line naming the best setting on validation, its mean objective and its margin over the next."""
    if not order or stats[order[0]][objective] is None:
        return "no setting has a completed job yet"
    best = stats[order[0]]
    ahead = margin(stats, order, objective)
    # a sweep of seeds alone has one setting: named by its overrides, it has no rival to be best against
    name = f"best setting on validation: {labels[order[0]]}" if len(order) > 1 else f"one setting: {order[0]}"
    return (
        f"{name}, mean {objective.replace('_', ' ')} {metric_text(objective, best[objective][0])}"
        f"{' %' if objective.endswith('acc') else ''} over {best['n']} job{'s' if best['n'] > 1 else ''}"
        + (f", ahead of the next by {ahead}" if ahead else "")
    )


def write_report(sweep_dir: Path) -> tuple[str, list[Path], str]:
    """Write report.md, report.csv, jobs.csv, report.png and, where they apply, heatmap.png, best_samples.png,
    best_confusion.png and search.png into `sweep_dir`; return the markdown, the files written and the line that
    names the best setting."""
    runs = find_runs(sweep_dir)
    rows = job_rows(runs)
    stats = setting_stats(runs)
    objective, minimize = objective_of(sweep_dir)
    order = ranked(stats, objective, minimize)
    shared = shared_overrides(runs)
    labels = {run.setting: label(run, shared) for run in runs}
    best = best_line(stats, order, labels, objective)
    statuses: defaultdict[str, int] = defaultdict(int)
    for row in rows:
        statuses[row["status"]] += 1
    what = objective.replace("_", " ")
    lines = [
        f"# Sweep report: {sweep_dir}",
        "",
        f"{len(runs)} jobs: " + ", ".join(f"{n} {status}" for status, n in statuses.items()),
        f"Every job: {','.join(shared)}" if shared else "",
        "",
        f"**{best[0].upper() + best[1:]}.**",
        "",
    ]
    lines += [
        paragraph
        for text in (margins_line(stats, order, labels), improving_line(runs))
        if text
        for paragraph in (text, "")
    ]
    lines += [
        "## Settings",
        "",
        f"Jobs that differ only by seed form one setting: mean ± sample std over its completed jobs (n of them), "
        f"ranked by the mean {what} ({'lower' if minimize else 'higher'} is better). The test columns are each "
        "setting's outcome, never used to rank: choose on validation. Still improving: those of its completed jobs "
        f"whose best valid loss came at their last epoch (in the last {100 * IMPROVING_SHARE:.0f} % of their epochs).",
        "",
        setting_table(stats, order, labels),
        "",
        f"![{what} per epoch of every job; the settings ranked by their mean {what}](report.png)",
        "",
    ]
    md_path, csv_path, jobs_path, png_path, heatmap_path = (
        sweep_dir / name for name in ("report.md", "report.csv", "jobs.csv", "report.png", "heatmap.png")
    )
    atomic_write(csv_path, csv_text(setting_rows(runs, stats, order)))
    atomic_write(jobs_path, csv_text(rows))
    atomic_write(png_path, figures.to_png(figure(runs, stats, order, objective, minimize)))
    written = [md_path, csv_path, jobs_path, png_path]
    grid = heatmap(runs, stats, order, objective, minimize)
    if grid is not None:
        atomic_write(heatmap_path, figures.to_png(grid))
        written.append(heatmap_path)
        lines += [f"![mean {what} of each combination of the two swept keys, the best marked](heatmap.png)", ""]
    chosen = best_job(runs, order, objective, minimize)
    if chosen is not None:
        section, images = best_job_section(sweep_dir, chosen, shared, objective)
        lines.append(section)
        written += images
    lines += ["## Jobs", "", job_table(runs, rows), ""]
    for path in (heatmap_path, *(sweep_dir / f"best_{name}" for name in (SAMPLES_PNG, CONFUSION_PNG))):
        if path not in written:
            path.unlink(missing_ok=True)  # an earlier report's, which no longer applies
    markdown = "\n".join(lines)
    searched = search_section(sweep_dir, runs)
    if searched is not None:
        markdown += "\n" + searched[0]
        atomic_write(sweep_dir / "search.png", figures.to_png(searched[1]))
        written.append(sweep_dir / "search.png")
    atomic_write(md_path, markdown)
    return markdown, written, best


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="fmsweep report", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a sweep dir (or a folder of sweeps, or a run dir)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point; a user error is one line on stderr and exit code 2."""
    try:
        markdown, written, _ = write_report(parse_args(argv).sweep_dir)
    except UserError as exc:
        print(f"fmsweep: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(markdown)
    print("\n".join(f"Wrote {path}" for path in written))


if __name__ == "__main__":
    main()
