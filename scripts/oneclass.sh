#!/usr/bin/env bash
# One-class protocol over all ten CIFAR-10 classes, then one report with the mean and std over classes.
#   bash scripts/oneclass.sh [RUNS_DIR] [more main.py flags, e.g. --config.encoder.epochs=50]
# Writes RUNS_DIR/class0 .. class9 and RUNS_DIR/report/report.json (+ report.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/oneclass}
shift || true
dirs=()
for c in 0 1 2 3 4 5 6 7 8 9; do
  python main.py --config="configs/oneclass.py:$c" --workdir="$runs/class$c" --mode=all "$@"
  dirs+=("$runs/class$c")
done
python main.py --config=configs/oneclass.py --mode=report --workdirs="$(IFS=,; echo "${dirs[*]}")"
