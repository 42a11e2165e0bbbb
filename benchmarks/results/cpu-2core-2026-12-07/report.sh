#!/usr/bin/env bash
# The report run (CIFAR-10 test split), once, after choosing on validation: a seed at a time into
# one OUT (--append), class split first.
set -e
while pgrep -f val_comb.sh > /dev/null; do sleep 10; done
Q="python -m benchmarks cifar10_quality --budget=cpu --split=report --out=runs/report_rot"
ONE=$(python -c "print(','.join('one_class_'+c for c in ('airplane','automobile','bird','cat','deer','dog','frog','horse','ship','truck')))")
$Q --protocols=class_split --seeds=0,1 > runs/report_rot_1.log 2>&1
$Q --protocols=$ONE --seeds=0 --append > runs/report_rot_2.log 2>&1
$Q --protocols=$ONE --seeds=1 --append > runs/report_rot_3.log 2>&1
echo REPORTDONE
