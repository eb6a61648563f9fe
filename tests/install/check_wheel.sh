#!/usr/bin/env bash
# The package as a user installs it: build a wheel, install it in a fresh venv, then from an empty folder run
# `fmsweep --help`, a 1-epoch run, a 2-job sweep, the ensemble and the report of that sweep. Run from the
# repository root with a Python that has the test dependencies (it writes the tiny test data set with them, with
# the 1,000 test images the ensemble needs at least: fmsweep.ensemble.MIN_IMAGES).
set -euo pipefail
repo=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python -m pip wheel -q --no-deps -w "$work/dist" .
python -c "import sys; sys.path.insert(0, 'tests'); from conftest import make_fashion_root; \
from pathlib import Path; make_fashion_root(Path('$work/data'), n_test=1000)"

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 "$work"/dist/fmsweep-*.whl

mkdir "$work/empty" && cd "$work/empty"
export PATH="$work/venv/bin:$PATH"
data=("data.root=$work/data" data.download=false)
step() { echo "check_wheel: $*"; "$@"; }

step fmsweep --help >help.txt
grep -q "model: fancy_cnn, fc, linear, vanilla_cnn" help.txt
step fmsweep "${data[@]}" model=fc epochs=1 hydra.run.dir=run
test "$(python -c 'import json; print(json.load(open("run/metrics.json"))["status"])')" = completed
step fmsweep -m "${data[@]}" epochs=1 seed=0,1 hydra.sweep.dir=sweep
step python -m fmsweep.ensemble sweep --data-root "$work/data"
step python -m fmsweep.report sweep
step fmsweep report sweep >/dev/null
step fmsweep status sweep | grep -q "2 completed"
step python -m fmsweep.status sweep >/dev/null
for f in ensemble.json report.md report.png; do
  test -f "sweep/$f" || { echo "check_wheel: sweep/$f missing" >&2; exit 1; }
done
python -c "import fmsweep, sys; sys.exit(0 if fmsweep.__file__.startswith('$work/venv/') else 1)"  # the wheel, not $repo
echo "check_wheel: the installed wheel works from an empty folder ($repo not on the path)"
