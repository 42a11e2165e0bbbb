#!/bin/bash
# Issue 19 part 2: the encoder-initialised siamese discriminator on the validation protocols,
# seed 0, the cpu recipe's encoder reused (runs/val_A/work); everything else the cpu recipe.
cd "$(git rev-parse --show-toplevel)"; source .venv/bin/activate
while pgrep -f val_shift.sh >/dev/null; do sleep 10; done
P=class_split,one_class_airplane
B="python benchmarks/cifar10_quality.py --budget=cpu --split=validation --protocols=$P --seeds=0 --bn-modes=running_stats --encoders-from=runs/val_A/work --set discriminator.arch=siamese"
date; echo "== siamese init lr x0.1"
$B --out=runs/val_siam_init01 --set discriminator.init_from_encoder=True --set discriminator.trunk_lr_scale=0.1 2>&1 | grep -v Warn | tail -2
date; echo "== siamese init frozen"
$B --out=runs/val_siam_init0 --set discriminator.init_from_encoder=True --set discriminator.trunk_lr_scale=0.0 2>&1 | grep -v Warn | tail -2
date; echo "== siamese init lr x1"
$B --out=runs/val_siam_init1 --set discriminator.init_from_encoder=True 2>&1 | grep -v Warn | tail -2
date; echo "== siamese random init"
$B --out=runs/val_siam_rand 2>&1 | grep -v Warn | tail -2
date
for v in init01 init0 init1 rand; do
  w=runs/val_siam_$v/work/validation/one_class_airplane/seed0/running_stats
  echo "== shortcuts $v"; python -m benchmarks shortcuts --workdir=$w --out=runs/val_siam_shortcuts_$v.json 2>&1 | grep -v Warn | tail -30
done
date
