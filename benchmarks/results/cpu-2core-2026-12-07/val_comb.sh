#!/usr/bin/env bash
# eval-only reruns of runs/val_rot's workdirs (every stage reused) with other combined detectors
set -e
for combo in rotation,pixels_knn mahalanobis,rotation mahalanobis,pixels_knn,rotation knn,pixels_knn,rotation; do
  name=${combo//,/_}
  python -m benchmarks cifar10_quality --budget=cpu --split=validation --out=runs/val_comb/$name \
    --work=runs/val_rot/work --protocols=class_split,one_class_airplane --seeds=0,1 \
    --set eval.combined=$combo > runs/val_comb/$name.log 2>&1
done
# CSI's shifted instances in the encoder, at the encoder's steps (batch 64 x 4 rotations = 256
# instances = 512 views a step, as the recipe's 256 x 2; 7 epochs = 434 of its 450 steps), seed 0
python -m benchmarks cifar10_quality --budget=cpu --split=validation --out=runs/val_csi \
  --protocols=class_split,one_class_airplane --seeds=0 --set encoder.shifted_instances=True \
  --set encoder.batch_size=64 --set encoder.epochs=7 --set rotation.enabled=False > runs/val_csi.log 2>&1
echo ALLDONE
