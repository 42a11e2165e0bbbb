#!/bin/bash
# Issue 19: the report run of the cpu budget (recipe B, chosen on validation), once, on the test split.
cd "$(git rev-parse --show-toplevel)"; source .venv/bin/activate
# (run after val_siam_mu.sh; probes and tests shared the 2 cores for part of its first 20 minutes)
date
python benchmarks/cifar10_quality.py --budget=cpu --split=report --out=runs/report_cpu 2>&1 | grep -v Warn | tail -80
date
