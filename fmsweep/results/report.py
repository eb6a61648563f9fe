"""`python -m fmsweep.results.report <sweep dir>`: the sweep's settings (jobs that differ only by seed) ranked by their mean
valid objective (a search's objective, else the valid loss), the best marked with its margin over the next; every
job; and for a search (hydra/sweeper=optuna) its trials by objective. Test figures are shown as each setting's
outcome, never used to rank. Writes report.md, report.csv (one row per setting: a column per swept key, each
metric's mean, std and n), jobs.csv (one row per job), report.png (and search.png) into the sweep dir, and prints
the markdown and the paths of the files written."""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fmsweep.results import figures
from fmsweep.sweep import search, space
from fmsweep.errors import ArgumentParser, UserError
from fmsweep.files import atomic_write
from fmsweep.results.runs import SEED_KEY, Run, command, find_runs, markdown_table, override_key

METRICS = ("valid_loss", "valid_acc", "test_loss", "test_acc")
MISSING = "–"
DEFAULT_OBJECTIVE = ("valid_loss", True)  # a grid's ranking: (metric, minimized)


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
        row = {"job": job_id(run), **swept_values(run.overrides, keys), "overrides": ",".join(run.overrides),
               "setting": run.setting, "status": run.status, "path": str(run.path)}
        row.update({k: m.get(k, "") for k in ("best_epoch", *METRICS, "num_params", "train_seconds", "epochs_run")})
        rows.append(row)
    return rows


def job_table(runs: list[Run], rows: list[dict[str, Any]]) -> str:
    """The jobs in job order, each named by the overrides it does not share with every other job (floats
    rounded for people)."""
    shared = shared_overrides(runs)
    header = ["job", "overrides", "status", "best epoch", "valid loss", "valid acc (%)", "test loss", "test acc (%)",
              "params", "train s"]
    lines = []
    for run, r in zip(runs, rows):
        metrics = [metric_text(k, r[k]) if r[k] != "" else MISSING for k in METRICS]
        own = ",".join(space.display_overrides([o for o in run.overrides if o not in shared]))
        lines.append([r["job"], own or "(shared overrides only)", r["status"], str(r["best_epoch"]) or MISSING,
                      *metrics, str(r["num_params"]) or MISSING,
                      f"{r['train_seconds']:.1f}" if r["train_seconds"] != "" else MISSING])
    return markdown_table(header, lines, right={3, 4, 5, 6, 7, 8, 9})


def setting_stats(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """Per setting (overrides without the seed), in job order: job count, completed count n, and per metric
    the (mean, sample std) over its completed jobs (std 0 when n is 1)."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.setting].append(run)
    stats = {}
    for setting, group in groups.items():
        done = [r for r in group if r.completed]
        entry: dict[str, Any] = {"jobs": len(group), "n": len(done)}
        for key in METRICS:
            values = [float(r.metrics[key]) for r in done]
            entry[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
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
    if first["n"] > 1 and second["n"] > 1:
        error = math.sqrt(first[objective][1] ** 2 / first["n"] + second[objective][1] ** 2 / second["n"])
        text += f" ({gap / error:.1f} standard errors)" if error > 0 else ""
    return text


def setting_table(stats: dict[str, dict[str, Any]], order: list[str], labels: dict[str, str]) -> str:
    """The settings in rank order, named as the figure names them."""
    header = ["rank", "setting", "n", "valid loss", "valid acc (%)", "test loss", "test acc (%)"]
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
        lines.append([place, labels[setting], n, *cells])
    return markdown_table(header, lines, right={0, 2, 3, 4, 5, 6})


def setting_rows(runs: list[Run], stats: dict[str, dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """One CSV row per setting in rank order: rank, a column per swept key, job count, and each metric's mean, std
    and n (completed jobs)."""
    keys = swept_keys(runs, seed=False)
    first = {run.setting: run for run in reversed(runs)}
    rows = []
    for rank, setting in enumerate(order, 1):
        s = stats[setting]
        row: dict[str, Any] = {"rank": rank if s["n"] else "", **swept_values(first[setting].overrides, keys),
                               "setting": setting, "jobs": s["jobs"], "n": s["n"]}
        for key in METRICS:
            row[f"{key}_mean"], row[f"{key}_std"] = s[key] if s[key] is not None else ("", "")
        rows.append(row)
    return rows


def shared_overrides(runs: list[Run]) -> list[str]:
    """The overrides that every job has: the figure states them once, in its title, instead of in every label."""
    common = set.intersection(*(set(run.overrides) for run in runs))
    return [o for o in runs[0].overrides if o in common]


def label(run: Run, shared: list[str]) -> str:
    """The job's setting as the figure labels it: its overrides without the seed and the shared ones, floats
    rounded for people."""
    own = [o for o in run.overrides if override_key(o) != SEED_KEY and o not in shared]
    return ",".join(space.display_overrides(own)) or ("(shared overrides only)" if shared else "(defaults)")


def figure(runs: list[Run], stats: dict[str, dict[str, Any]], order: list[str], objective: str,
           minimize: bool) -> Figure:
    """report.png: valid accuracy per epoch of every job by setting and seed; each setting's mean objective,
    ranked."""
    shared = shared_overrides(runs)
    labels = {run.setting: label(run, shared) for run in runs}
    curves: dict[str, list[tuple[str, list[float], list[float]]]] = defaultdict(list)
    for run in runs:
        history = run.history()
        if history:
            seed = swept_values(run.overrides, [SEED_KEY])[SEED_KEY] or str(run.config.get(SEED_KEY, ""))
            curves[labels[run.setting]].append((seed, [h["epoch"] for h in history], [h["valid_acc"] for h in history]))
    points = {labels[k]: (*stats[k][objective], stats[k]["n"]) for k in order if stats[k][objective] is not None}
    return figures.sweep([labels[k] for k in order], dict(curves), points, objective, minimize, shared)


def objective_of(sweep_dir: Path) -> tuple[str, bool]:
    """What ranks the settings: a search's objective and direction, else the valid loss, minimized."""
    study = search.find_study(sweep_dir)
    if study is None:
        return DEFAULT_OBJECTIVE
    import optuna

    return study.user_attrs["objective"], study.direction == optuna.study.StudyDirection.MINIMIZE


def search_section(sweep_dir: Path, runs: list[Run]) -> tuple[str, Figure] | None:
    """For a search's sweep dir: its trials sorted by objective (pruned and failed ones after), with their searched
    values and status, the best trial and the command that trains it again, and search.png."""
    study = search.find_study(sweep_dir)
    if study is None:
        return None
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    objective, minimize = study.user_attrs["objective"], study.direction == optuna.study.StudyDirection.MINIMIZE
    by_num = {run.num: run for run in runs if run.path.parent == sweep_dir}
    trials = study.trials
    names = list(dict.fromkeys(name for t in trials for name in t.distributions))
    log_scale = {name for t in trials for name, d in t.distributions.items()
                 if isinstance(d, (FloatDistribution, IntDistribution)) and d.log}

    def value(t: optuna.trial.FrozenTrial) -> float | None:
        if t.value is not None:
            return t.value
        return t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None

    def order(t: optuna.trial.FrozenTrial) -> tuple[int, float]:
        v = t.value if t.value is not None else math.inf
        return (0, v if minimize else -v) if t.state.name == "COMPLETE" else (1, t.number)

    rows = [[str(t.number), by_num[t.number].status if t.number in by_num else t.state.name.lower(),
             f"{t.value:.4f}" if t.value is not None else MISSING,
             *(space.readable(t.params[n]) if n in t.params else MISSING for n in names)]
            for t in sorted(trials, key=order)]
    lines = ["## Search", "", f"{len(trials)} trials, objective {objective} ({'minimized' if minimize else 'maximized'}), "
             "best first; a pruned trial stopped at the epoch its status names, with its last reported value.", "",
             markdown_table(["trial", "status", objective, *names], rows, right={0, 2}), ""]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        lines += [f"Best: trial {best.number}, {objective} {best.value:.4f}."]
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
    return (f"{name}, mean {objective.replace('_', ' ')} {metric_text(objective, best[objective][0])}"
            f"{' %' if objective.endswith('acc') else ''} over {best['n']} job{'s' if best['n'] > 1 else ''}"
            + (f", ahead of the next by {ahead}" if ahead else ""))


def write_report(sweep_dir: Path) -> tuple[str, list[Path], str]:
    """Write report.md, report.csv, jobs.csv and report.png into `sweep_dir`; return the markdown, the files
    written and the line that names the best setting."""
    runs = find_runs(sweep_dir)
    rows = job_rows(runs)
    stats = setting_stats(runs)
    objective, minimize = objective_of(sweep_dir)
    order = ranked(stats, objective, minimize)
    shared = shared_overrides(runs)
    labels = {run.setting: label(run, shared) for run in runs}
    best = best_line(stats, order, labels, objective)
    statuses = defaultdict(int)
    for row in rows:
        statuses[row["status"]] += 1
    markdown = "\n".join([
        f"# Sweep report: {sweep_dir}",
        "",
        f"{len(runs)} jobs: " + ", ".join(f"{n} {status}" for status, n in statuses.items()),
        f"Every job: {','.join(shared)}" if shared else "",
        "",
        f"**{best[0].upper() + best[1:]}.**",
        "",
        "## Settings",
        "",
        f"Jobs that differ only by seed form one setting: mean ± sample std over its completed jobs (n of them), "
        f"ranked by the mean {objective.replace('_', ' ')} ({'lower' if minimize else 'higher'} is better). The "
        "test columns are each setting's outcome, never used to rank: choose on validation.",
        "",
        setting_table(stats, order, labels),
        "",
        "![valid accuracy per epoch of every job; the settings ranked by their valid objective](report.png)",
        "",
        "## Jobs",
        "",
        job_table(runs, rows),
        "",
    ])
    md_path, csv_path, jobs_path, png_path = (sweep_dir / name for name in
                                              ("report.md", "report.csv", "jobs.csv", "report.png"))
    atomic_write(csv_path, csv_text(setting_rows(runs, stats, order)))
    atomic_write(jobs_path, csv_text(rows))
    atomic_write(png_path, figures.to_png(figure(runs, stats, order, objective, minimize)))
    written = [md_path, csv_path, jobs_path, png_path]
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
