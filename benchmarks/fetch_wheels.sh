#!/usr/bin/env bash
# Fills wheels/ (git-ignored) with what a bare GPU machine lacks for benchmarks/gpu.sh.
#
#   bash benchmarks/fetch_wheels.sh            # run here, where PyPI is reachable
#
# The GPU image (Python 3.12) already has jax[cuda], flax, optax, orbax-checkpoint, chex, numpy,
# scikit-learn, pillow, matplotlib, absl-py, PyYAML, torch and torchvision. It lacks ml_collections
# (configs) and dm-pix (augmentation); both are pure-Python wheels. tensorflow-datasets is NOT
# needed (the benchmarks read the JPEG archive). Add a name below if a new dependency appears.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p wheels
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d wheels \
  "ml_collections==1.1.0" "dm-pix==0.4.5"
ls -l wheels
