#!/bin/bash
# Issue 19: the frozen encoder-initialised siamese discriminator with semantic positives (mu = 1),
# validation protocols, seed 0, encoders reused (A: recipe B's encoder; D: ResNet-10 mild tau 0.1).
cd "$(git rev-parse --show-toplevel)"; source .venv/bin/activate
P=class_split,one_class_airplane
B="python benchmarks/cifar10_quality.py --budget=cpu --split=validation --protocols=$P --seeds=0 --bn-modes=running_stats --set discriminator.arch=siamese --set discriminator.init_from_encoder=True"
date; echo "== A encoder, frozen trunk, mu 1"
$B --encoders-from=runs/val_A/work --out=runs/val_siam0_mu1 --set discriminator.trunk_lr_scale=0.0 --set discriminator.mu=1.0 2>&1 | grep -v Warn | tail -2
date; echo "== D encoder, frozen trunk, mu 1"
$B --encoders-from=runs/val_D/work --out=runs/val_D_siam0_mu1 --set discriminator.depth=10 --set encoder.depth=10 --set encoder.augment=encoder_mild --set encoder.temperature=0.1 --set encoder.epochs=60 --set discriminator.trunk_lr_scale=0.0 --set discriminator.mu=1.0 2>&1 | grep -v Warn | tail -2
date
