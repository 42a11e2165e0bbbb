#!/bin/bash
# Issue 19 part 3: the scaling curve, class split, validation, seed 0, the cpu recipe: encoder epochs
# 7, 15, (30 = runs/val_B), 60, 120 (16x), then discriminator epochs 4 and 16 (8 = the recipe) at
# the largest encoder.
cd "$(git rev-parse --show-toplevel)"; source .venv/bin/activate
while pgrep -f "val_siamese.sh|val_shift.sh|enc_recipes.sh|val_matched.sh" >/dev/null; do sleep 10; done
B="python benchmarks/cifar10_quality.py --budget=cpu --split=validation --protocols=class_split --seeds=0 --bn-modes=running_stats"
for e in 7 15 60 120; do
  date; echo "== encoder epochs $e"
  $B --out=runs/scale_e$e --set encoder.epochs=$e 2>&1 | grep -v Warn | grep "class_split |" | head -4
done
for d in 4 16; do
  date; echo "== discriminator epochs $d (encoder 120)"
  $B --out=runs/scale_e120_d$d --encoders-from=runs/scale_e120/work --set encoder.epochs=120 --set discriminator.epochs=$d 2>&1 | grep -v Warn | grep "class_split |" | head -4
done
date
