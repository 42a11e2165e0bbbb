#!/usr/bin/env bash
# eval-only: SemSAD combined with a detector on its own encoder (keeps the neighbourhood's distance)
set -e
for combo in semsad,knn semsad,mahalanobis; do
  name=${combo//,/_}
  python -m benchmarks cifar10_quality --budget=cpu --split=validation --out=runs/val_comb/$name \
    --work=runs/val_rot/work --protocols=class_split,one_class_airplane --seeds=0,1 \
    --set eval.combined=$combo > runs/val_comb/$name.log 2>&1
  python -m benchmarks cifar10_quality --budget=cpu --split=validation --out=runs/val_comb/csi_$name \
    --work=runs/val_csi/work --protocols=class_split,one_class_airplane --seeds=0 \
    --set encoder.shifted_instances=True --set encoder.batch_size=64 --set encoder.epochs=7 \
    --set rotation.enabled=False --set eval.combined=$combo > runs/val_comb/csi_$name.log 2>&1
done
echo ALLDONE2
