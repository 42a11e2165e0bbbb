"""Test setup: four fake CPU devices (set before jax is imported) and the shared smoke workdirs."""

import os
import sys

import pytest

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


# One trained and one evaluated smoke workdir per test session, built on first request (a run of tests
# that need none never builds them) under pytest's temporary directory. They are shared: never modify
# them; a test that writes to a workdir takes a ``helpers.copy_of(...)`` of one.


@pytest.fixture(scope="session")
def smoke_trained(tmp_path_factory) -> str:
    """A smoke workdir with a finished encoder, feature bank, discriminator and rotation network
    (do not modify)."""
    from helpers import config

    from semsad_jax.run import run

    workdir = str(tmp_path_factory.mktemp("smoke") / "trained")
    run(config(), workdir, "encoder")
    run(config(), workdir, "discriminator")
    run(config(), workdir, "rotation")
    return workdir


@pytest.fixture(scope="session")
def smoke_evaluated(smoke_trained, tmp_path_factory) -> str:
    """A copy of ``smoke_trained`` after ``--mode=eval`` with plots (do not modify)."""
    from helpers import config, copy_of

    from semsad_jax.run import run

    workdir = copy_of(smoke_trained, tmp_path_factory.mktemp("smoke") / "evaluated")
    run(config(plots=True), workdir, "eval")
    return workdir


@pytest.fixture(scope="session")
def smoke_detector(smoke_evaluated):
    """A Detector restored from ``smoke_evaluated`` (shared: do not modify)."""
    from semsad_jax.evaluation.detector import Detector

    return Detector.restore(smoke_evaluated)
