#!/bin/bash
# Issue 19 part 2: statistics-keeping negatives (discriminator.shifted_kind) on the validation
# protocols, seed 0, the cpu recipe's encoder reused (runs/val_A/work), shifted_negatives 0.5.
cd "$(git rev-parse --show-toplevel)"; source .venv/bin/activate
P=class_split,one_class_airplane
for kind in rotation patch4 patch16 pixels; do
  date; echo "== $kind"
  python benchmarks/cifar10_quality.py --budget=cpu --split=validation --protocols=$P --seeds=0 \
    --bn-modes=running_stats --encoders-from=runs/val_A/work --out=runs/val_shift_$kind \
    --set discriminator.shifted_kind=$kind 2>&1 | grep -v Warn | tail -3
done
date
for kind in rotate_or_quadrants rotation patch4 patch16 pixels; do
  w=runs/val_shift_$kind/work/validation/one_class_airplane/seed0/running_stats
  [ $kind = rotate_or_quadrants ] && w=runs/val_B/work/validation/one_class_airplane/seed0/running_stats
  echo "== shortcuts $kind $w"
  python -m benchmarks shortcuts --workdir=$w --out=runs/val_shift_shortcuts_$kind.json 2>&1 | grep -v Warn | tail -30
done
date
