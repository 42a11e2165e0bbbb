#!/bin/bash
# Issue 19 part 3 on the report protocol: the class split (test split), seed 0, the cpu recipe with
# the encoder trained 7, 15, (30 = the report run), 60, 120 epochs; then the curve.
cd "$(git rev-parse --show-toplevel)"; source .venv/bin/activate
# (run after the report run and the 30-minute encoder, alone on the machine)
B="python benchmarks/cifar10_quality.py --budget=cpu --split=report --protocols=class_split --seeds=0 --bn-modes=running_stats"
for e in 7 15 60 120; do
  date; echo "== encoder epochs $e"
  $B --out=runs/report_scale_e$e --set encoder.epochs=$e 2>&1 | grep -v Warn | grep "class_split |" | head -4
done
date
# the 30-epoch point is seed 0 of the report run (runs/report_cpu): runs/report_e30_seed0 holds its
# class-split seed-0 records (results.json) and links its workdir (work/report/class_split/seed0)
python -m benchmarks scaling_curve --runs runs/report_scale_e7 runs/report_scale_e15 \
  runs/report_e30_seed0 runs/report_scale_e60 runs/report_scale_e120 --protocol=class_split \
  --out=benchmarks/results/cpu-2core-2026-12-05/scaling_report_class_split
# discriminator budgets 4 and 16 epochs (8 = the recipe) at the 120-epoch encoder (scaling/report_e120_d*)
for d in 4 16; do
  $B --out=runs/report_scale_e120_d$d --encoders-from=runs/report_scale_e120/work --set encoder.epochs=120 --set discriminator.epochs=$d 2>&1 | grep -v Warn | grep "class_split |" | head -4
done
