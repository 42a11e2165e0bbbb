#!/bin/bash
# Issue 19 part 1: encoder recipes at equal steps (450 = the cpu budget's 30 epochs of 4,000 at
# batch 256), class split, validation split, seed 0.
cd "$(git rev-parse --show-toplevel)"; source .venv/bin/activate
while pgrep -f "val_siamese.sh|val_shift.sh" >/dev/null; do sleep 10; done
E="python -m benchmarks encoder_recipes --steps=450"
SGD="--set encoder.optimizer=sgd --set encoder.schedule=cosine --set encoder.weight_decay=5e-4 --set encoder.warmup_epochs=2"
date; $E --out=runs/enc/sgd006 $SGD --set encoder.learning_rate=0.06 2>&1 | grep -v Warn | tail -1
date; $E --out=runs/enc/sgd03 $SGD --set encoder.learning_rate=0.3 2>&1 | grep -v Warn | tail -1
date; $E --out=runs/enc/adam_cos --set encoder.schedule=cosine 2>&1 | grep -v Warn | tail -1
date; $E --out=runs/enc/adam_all --train-limit=0 2>&1 | grep -v Warn | tail -1
date; $E --out=runs/enc/adam 2>&1 | grep -v Warn | tail -1
date
