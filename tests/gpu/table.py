"""The closing table of tests/gpu/accept.sh: each step's time and status, and the figures against their targets.

`python3 tests/gpu/table.py OUT_DIR [--tiny]` reads what the steps wrote to OUT_DIR, prints the table, writes it to
OUT_DIR/accept.md and exits 1 if a step failed, a target was missed or a pack bench did not train its pack as asked
(bench-stacked stacked, bench-one-by-one one after another). --tiny: figures without targets, the rest checked.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

# The targets on an H100/H200: (what, comparison, value).
LONE_EPOCH_S = 0.41  # fancy_cnn+flip_affine, one run: no slower than the path measured before packing (0.405 s)
STACKED_RATIO = 2.0  # a stacked pack of 6 against 6 lone runs in a row, aggregate images/s
SWEEP_WALL_S = 60.0  # 6 x experiment=fancy_cnn_aug, pack=6, and its ensemble
ENSEMBLE_ACC = 0.945


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def main(out: Path, tiny: bool) -> int:
    steps = {}
    for line in (out / "steps.tsv").read_text().splitlines():
        name, start, end, code = line.split("\t")
        steps[name] = ((int(end) - int(start)) / 1e9, int(code))
    rows: list[tuple[str, str, str, str]] = []  # what, measured, target, verdict
    failed = False

    def add(what: str, value: float | None, shown: str, target: float | None, at_most: bool, target_shown: str) -> None:
        nonlocal failed
        if value is None:
            rows.append((what, "no result", target_shown if not tiny else "—", "missing"))
            failed = True
            return
        if tiny or target is None:
            rows.append((what, shown, "—", ""))
            return
        met = value <= target if at_most else value >= target
        failed |= not met
        rows.append((what, shown, target_shown, "met" if met else "MISSED"))

    for name, (took, rc) in steps.items():
        rows.append((f"step {name}", f"{took:.1f} s", "exit 0", "ok" if rc == 0 else f"FAILED (exit {rc})"))
        failed |= rc != 0

    try:
        root = ET.parse(out / "pytest.xml").getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        if suite is None:
            raise AttributeError("no testsuite in pytest.xml")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        shown = f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"
        ok = counts["failures"] + counts["errors"] == 0 and (counts["skipped"] == 0 or tiny) and counts["tests"] > 0
        rows.append(("pytest -m gpu", shown, "all pass", "ok" if ok else "FAILED"))
        failed |= not ok
    except (OSError, ET.ParseError, AttributeError):
        rows.append(("pytest -m gpu", "no report", "all pass", "missing"))
        failed = True

    lone = read_json(out / "bench-lone" / "bench.json")
    result = lone["results"][0] if lone else None
    seconds = result["median_seconds"]["fmsweep"] if result else None
    add(
        "lone run, fancy_cnn+flip_affine, s/epoch"
        + (" (limited batches)" if result and result["limited_batches"] else ""),
        seconds,
        f"{seconds:.3f} s ({result['speedup']:.2f}x the practical)" if result else "",
        LONE_EPOCH_S,
        True,
        f"≤ {LONE_EPOCH_S} s",
    )
    for name, target in (("stacked", STACKED_RATIO), ("one-by-one", None)):
        bench = read_json(out / f"bench-{name}" / "bench.json")
        result = bench["results"][0] if bench else None
        how = ("stacked" if result["stacked"] else "one after another") if result else name
        ratio = result["ratio"] if result else None
        add(
            f"pack of 6 ({how}) against 6 lone runs in a row, aggregate images/s",
            ratio,
            f"{ratio:.2f}x" if result else "",
            target,
            False,
            f"≥ {target:g}x" if target else "—",
        )
        if result:  # what the bench timed must be what it was asked for (stack=true, stack=false), tiny or not
            wanted = "stacked" if name == "stacked" else "one after another"
            rows.append((f"bench-{name}: the pack of 6 trained", how, wanted, "ok" if how == wanted else "FAILED"))
            failed |= how != wanted
            per_epoch = result["median_seconds"]["packed"] / result["job_epochs"]
            rows.append((f"pack of 6 ({how}), whole job s/epoch", f"{per_epoch:.3f} s", "—", ""))

    wall = sum(steps[name][0] for name in ("sweep", "ensemble") if name in steps)
    add(
        "headline sweep + ensemble, wall",
        wall if "sweep" in steps else None,
        f"{wall:.1f} s",
        SWEEP_WALL_S,
        True,
        f"≤ {SWEEP_WALL_S:g} s",
    )
    ensemble = read_json(out / "sweep" / "ensemble.json")
    acc = ensemble["average"]["acc"] if ensemble else None
    members = ensemble and [m["acc"] for m in ensemble["members"]]
    add(
        "ensemble accuracy (test split)",
        acc,
        f"{100 * acc:.2f} % (members {100 * min(members):.2f}–{100 * max(members):.2f} %)"
        if members and acc is not None
        else "",
        ENSEMBLE_ACC,
        False,
        f"≥ {100 * ENSEMBLE_ACC:g} %",
    )

    machine = (lone or {}).get("machine", {})
    lines = [
        f"GPU acceptance{' (tiny: a few batches, no targets)' if tiny else ''}: {machine.get('device', '?')}, "
        f"torch {machine.get('torch', '?')}, {machine.get('cpu_count', '?')} CPUs, {machine.get('date', '')}",
        "",
        "| check | measured | target | verdict |",
        "| --- | ---: | ---: | --- |",
        *(f"| {' | '.join(row)} |" for row in rows),
    ]
    text = "\n".join(lines) + "\n"
    (out / "accept.md").write_text(text)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(Path(args[0]), "--tiny" in args[1:]))
