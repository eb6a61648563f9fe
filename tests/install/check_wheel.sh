#!/usr/bin/env bash
# The package as a user installs it: build a wheel, install it in a fresh venv, then from an empty folder run
# `fmsweep --help`, a 1-epoch run, a 2-job sweep, the ensemble and the report of that sweep, and a search that is
# cancelled (`fmsweep cancel`) and resumed (`fmsweep resume`) to its end. Run from the
# repository root with a Python that has the test dependencies (it writes the tiny test data set with them, with
# the 1,000 test images the ensemble needs at least: fmsweep.results.ensemble.MIN_IMAGES).
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
step python -m fmsweep.results.ensemble sweep --data-root "$work/data"
step python -m fmsweep.results.report sweep
step fmsweep report sweep >/dev/null
step fmsweep status sweep | grep -q "2 completed"
step python -m fmsweep.status sweep >/dev/null
for f in ensemble.json report.md report.png; do
  test -f "sweep/$f" || { echo "check_wheel: sweep/$f missing" >&2; exit 1; }
done

# A search of 2 trials (one submitit_local worker): the test gate (fmsweep/gate.py) holds its first trial after
# epoch 1, `fmsweep cancel` stops it there, and `fmsweep resume` finishes the search, that trial from its last.pt.
mkdir gate && echo 1 >gate/hold
echo "check_wheel: fmsweep -m hydra/sweeper=optuna ... hydra.sweep.dir=search, held by the test gate"
FMSWEEP_TEST_GATE=$PWD/gate fmsweep -m hydra/sweeper=optuna hydra/launcher=submitit_local "${data[@]}" model=fc \
  'optimizer.lr=tag(log,interval(1e-4,1e-1))' epochs=2 hydra.sweeper.n_trials=2 hydra.sweeper.n_jobs=1 \
  hydra.sweep.dir=search >search.log 2>&1 &
search=$!
polls=0
until compgen -G "gate/0_*@1" >/dev/null; do
  if ! kill -0 "$search" 2>/dev/null || [ "$polls" -ge 3000 ]; then  # ended, or 10 minutes passed
    echo "check_wheel: the search's first trial did not reach the gate" >&2; cat search.log >&2; exit 1
  fi
  sleep 0.2; polls=$((polls + 1))
done
step fmsweep cancel search | tee cancel.txt
grep -q "^fmsweep: cancelled 1 local job of search " cancel.txt
rm gate/hold
wait "$search" || true  # the search ends once its worker is gone; its trials did not end: exit 1
step fmsweep resume search | tee resume.txt
grep -q "^fmsweep: search of 2 trials: 2 complete, 0 pruned, 0 fail$" resume.txt
grep -q "Resuming from" search/0_*/__main__.log
step fmsweep status search | grep -q "2 completed"
python -c "import fmsweep, sys; sys.exit(0 if fmsweep.__file__.startswith('$work/venv/') else 1)"  # the wheel, not $repo
echo "check_wheel: the installed wheel works from an empty folder ($repo not on the path)"
