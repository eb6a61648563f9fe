#!/usr/bin/env bash
# The GPU acceptance checks as one command: bash tests/gpu/accept.sh OUT_DIR [--tiny] [--data DIR]
#
# From the repository root, on a GPU machine (set up as in README "Testing on a GPU"): `pytest -m gpu`; the
# benchmark of a lone fancy_cnn+flip_affine run; a pack of 6 against 6 lone runs in a row (--pack 6), stacked and
# one after another; the headline sweep (6 x experiment=fancy_cnn_aug, pack=6, submitit_local, one GPU) and its
# ensemble. Each step is timed and logged to OUT_DIR/<step>.log; it ends with one table of the figures against
# their targets (OUT_DIR/accept.md) and exits 1 if a step failed, a target was missed or a pack bench did not
# train its pack as asked (stacked, one after another).
# --tiny: the same steps on a few batches of a small CNN, on whatever device there is (CI runs it on the CPU).
# --data DIR: the folder holding FashionMNIST/raw (default: .gpu/data, else ../shared/data).
set -uo pipefail
usage="usage: bash tests/gpu/accept.sh OUT_DIR [--tiny] [--data DIR]"
out=${1:?$usage}
shift
tiny=false
data=""
while [ $# -gt 0 ]; do
  case $1 in
    --tiny) tiny=true ;;
    --data) data=${2:?$usage}; shift ;;
    *) echo "accept.sh: unknown argument '$1'; $usage" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/../.."
if [ -z "$data" ]; then
  for candidate in .gpu/data ../shared/data; do
    [ -d "$candidate/FashionMNIST/raw" ] && { data=$candidate; break; }
  done
fi
if [ ! -d "$data/FashionMNIST/raw" ]; then
  echo "accept.sh: no FashionMNIST/raw in '${data:-.gpu/data or ../shared/data}'; pass --data DIR" >&2
  exit 2
fi
data=$(cd "$data" && pwd)
if [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
  echo "accept.sh: $out is not empty: give a new folder, so that no earlier results are overwritten" >&2
  exit 2
fi
mkdir -p "$out" && out=$(cd "$out" && pwd)

# A bare GPU machine (README "Testing on a GPU"): the missing packages from .gpu/whl, fmsweep from this checkout.
if ! python3 -c "import fmsweep, hydra, submitit, optuna" 2>/dev/null; then
  if [ -d .gpu/whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fmsweep-site .gpu/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/fmsweep-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  python3 -c "import fmsweep, hydra, submitit, optuna" || { echo "accept.sh: fmsweep's dependencies are missing" >&2; exit 1; }
fi
export PYTHONUNBUFFERED=1
cuda=$(python3 -c "import torch; print(str(torch.cuda.is_available()).lower())")

common=("data.root=$data" data.download=false)
if $tiny; then
  common+=("model.channels=[8,16,16]" data.subset=1000)
  lone=(--epochs 1 --warmup 0 --cpu-cnn-batches 4)
  pack=(--job-epochs 1 --epochs 1 --warmup 0 --cpu-cnn-batches 4)  # 640 images: 128 valid, at least the 100 asked
  reference=("${pack[@]}")
  sweep=(epochs=1 hydra.launcher.timeout_min=10)
else
  lone=(--epochs 3 --warmup 1)
  pack=(--job-epochs 2 --epochs 2 --warmup 1)
  reference=(--job-epochs 2 --epochs 1 --warmup 1)  # one after another: a reference, one timed round
  sweep=(hydra.launcher.timeout_min=30)
fi
$cuda && sweep+=(hydra.launcher.gpus_per_node=1)

: >"$out/steps.tsv"
step() {  # step NAME COMMAND...: run it, its output to the console and OUT_DIR/NAME.log; record its times and status
  local name=$1; shift
  echo "accept.sh: $name: $*"
  local start=$(date +%s%N)
  "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\t%s\n' "$name" "$start" "$(date +%s%N)" "$rc" >>"$out/steps.tsv"
}
step pytest python3 -m pytest -m gpu -ra -p no:cacheprovider --junitxml="$out/pytest.xml"
step bench-lone python3 -m fmsweep.bench --cases fancy_cnn+flip_affine "${lone[@]}" --out "$out/bench-lone" "${common[@]}"
step bench-stacked python3 -m fmsweep.bench --cases fancy_cnn+flip_affine --pack 6 "${pack[@]}" --out "$out/bench-stacked" \
  "${common[@]}" stack=true
step bench-one-by-one python3 -m fmsweep.bench --cases fancy_cnn+flip_affine --pack 6 "${reference[@]}" \
  --out "$out/bench-one-by-one" "${common[@]}" stack=false
step sweep python3 -m fmsweep -m hydra/launcher=submitit_local experiment=fancy_cnn_aug "seed=range(6)" pack=6 \
  "${sweep[@]}" "${common[@]}" hydra.sweep.dir="$out/sweep"
step ensemble python3 -m fmsweep.results.ensemble "$out/sweep" --data-root "$data"
python3 tests/gpu/table.py "$out" $($tiny && echo --tiny)
