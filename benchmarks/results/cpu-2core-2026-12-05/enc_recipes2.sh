#!/bin/bash
# Issue 19 part 1, round 2: the encoder's network, views and data at equal compute (class split,
# validation split, seed 0, kNN k = 20). Results: encoder_recipes/r2_*.json.
cd "$(git rev-parse --show-toplevel)"; source .venv/bin/activate
E="python -m benchmarks encoder_recipes"
M="--set encoder.augment=encoder_mild --set encoder.temperature=0.1"
$E --steps=450 --out=runs/enc2/mild_t01_all $M --train-limit=0
$E --steps=450 --out=runs/enc2/mild_t02 --set encoder.augment=encoder_mild --set encoder.temperature=0.2
$E --steps=450 --out=runs/enc2/s32 $M --set data.image_size=32 --set encoder.stem_stride=2
$E --steps=450 --out=runs/enc2/d10 $M --set encoder.depth=10
$E --steps=900 --out=runs/enc2/b128 $M --set encoder.batch_size=128
D="$M --set encoder.depth=10 --train-limit=0"
$E --steps=900 --out=runs/enc2/d10_s32_all_900 $D --set data.image_size=32 --set encoder.stem_stride=2
$E --steps=900 --out=runs/enc2/d10_all_900 $D
# the 30-minute budget: constant lr, then cosine; kNN monitor every 15 epochs
$E --steps=5850 --out=runs/enc2/d10_all_30min $D --set encoder.knn_every_epochs=15
$E --steps=5850 --out=runs/enc2/d10_all_30min_cos $D --set encoder.schedule=cosine --set encoder.knn_every_epochs=15
# the shipped config, as a new user runs it (test split of the six animal classes)
python main.py --config=configs/class_split.py:animals --workdir=runs/enc2/animals_shipped --mode=encoder
# second seed of the round-1 recipe and of the equal-compute winner
$E --seed=1 --steps=450 --out=runs/enc2/seed1_adam
$E --seed=1 --steps=900 --out=runs/enc2/seed1_d10_all_900 $D
# second seed of the 30-minute budget (a later session, the same day)
$E --seed=1 --steps=5850 --out=runs/enc2/seed1_d10_all_30min $D --set encoder.knn_every_epochs=15
