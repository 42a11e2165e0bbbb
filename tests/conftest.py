"""Test setup: four fake CPU devices (set before jax is imported) and shared tiny fixtures."""

import os
import sys

# Four fake CPU devices; a lower XLA CPU optimisation level roughly halves the compile time of the
# tiny ResNet steps, which dominates the suite's run time.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-tfds-dir-tests-never-download")
os.environ.setdefault("SEMSAD_CACHE", "none")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
