#!/usr/bin/env bash
# The lower bounds of pyproject.toml, proven: a fresh venv holding exactly the oldest versions the
# ranges allow (uv's lowest-direct resolution: every direct dependency at its lower bound, with the
# tfds and dev extras, on the oldest Python, 3.11) runs the test suite.
#
#   bash scripts/lowest.sh                 # the whole suite
#   bash scripts/lowest.sh tests/test_x.py # a part of it
#
# Needs uv (pip install uv). The venv goes to $LOWEST_VENV (default /tmp/semsad-lowest).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${LOWEST_VENV:-/tmp/semsad-lowest}
uv venv -q --clear --seed -p 3.11 "$venv"  # --seed: pip, which tests/test_installed.py uses
uv pip compile -q pyproject.toml --extra tfds --extra dev --resolution lowest-direct \
  --python-version 3.11 -o "$venv/lowest.txt"
VIRTUAL_ENV=$venv uv pip sync -q "$venv/lowest.txt"
echo "lowest versions (pyproject.toml's lower bounds):"
VIRTUAL_ENV=$venv uv pip list 2>/dev/null | grep -iE '^(jax|jaxlib|flax|optax|orbax-checkpoint|ml-collections|absl-py|numpy|scikit-learn|pillow|dm-pix|matplotlib|tensorflow-datasets|importlib-resources|tensorflow-cpu|tensorflow|pytest|hypothesis|ruff|nbformat|nbclient|ipykernel|import-linter|packaging) '
JAX_PLATFORMS=cpu "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
