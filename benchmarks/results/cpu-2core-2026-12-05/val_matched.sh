#!/bin/bash
# Issue 19 part 2: matched view strengths (discriminator.matched_views) with the cpu recipe, seed 0.
cd "$(git rev-parse --show-toplevel)"; source .venv/bin/activate
while pgrep -f "val_siamese.sh|val_shift.sh|enc_recipes.sh" >/dev/null; do sleep 10; done
P=class_split,one_class_airplane
B="python benchmarks/cifar10_quality.py --budget=cpu --split=validation --protocols=$P --seeds=0 --bn-modes=running_stats --encoders-from=runs/val_A/work"
date; echo "== matched views"
$B --out=runs/val_matched --set discriminator.matched_views=True 2>&1 | grep -v Warn | tail -2
date
python -m benchmarks shortcuts --workdir=runs/val_matched/work/validation/one_class_airplane/seed0/running_stats --out=runs/val_matched_shortcuts.json 2>&1 | grep -v Warn | tail -3
python -m benchmarks shortcuts --workdir=runs/val_A/work/validation/one_class_airplane/seed0/running_stats --out=runs/val_A_shortcuts.json 2>&1 | grep -v Warn | tail -3
date
