"""Every shipped detector (pretrained/) restores and still means what its card says.

For each card ``pretrained/NAME.json`` (written by scripts/pretrained.py):

* the archive is the one the registry (semsad_jax/workdir/shipped.py) names, with its sha256;
* restored by its shipped name, every detector's scores on the card's fixed images equal the card's
  (and the nearest training images), so a change that alters what a shipped checkpoint means fails;
* the card's protocol, run by the command line (``--mode=eval --workdir=NAME``, the CIFAR-10 test
  split read from ../shared/data beside the checkout), reproduces the card's AUROC of every
  detector on every OOD set.

Both run in a child process with XLA's default flags, as a user runs them (the suite's
``--xla_backend_optimization_level=0`` would make the 10,000-image protocol take minutes).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from semsad_jax.workdir.archive import file_sha256
from semsad_jax.workdir.shipped import local_archive, shipped_detector, shipped_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CARDS = {os.path.basename(p)[: -len(".json")]: p for p in glob.glob(f"{ROOT}/pretrained/*.json")}
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
SCORE = """
import json, sys
from semsad_jax import Detector
from semsad_jax.data import load_images
det = Detector.restore(sys.argv[1])
images = load_images(sys.argv[2], det.image_size, cache_dir="none").images
print(json.dumps({k: v.tolist() for k, v in det.scores(images).items()}))
print(json.dumps(det.thresholds))
"""


def _card(name: str) -> dict:
    with open(CARDS[name]) as f:
        return json.load(f)


def _local(spec: str) -> str | None:
    """The spec with an archive of shared/data recorded on the training machine pointed at the one
    beside this checkout (None when it is not there)."""
    if not spec.startswith("archive:"):
        return spec
    path, bang, rest = spec[len("archive:") :].partition("!")
    here = os.path.join(SHARED, os.path.basename(path))
    return f"archive:{here}{bang}{rest}" if os.path.exists(here) else None


def _run(*args: str, cache: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", SEMSAD_CACHE=cache, PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return out.stdout


def test_every_shipped_name_has_an_archive_and_a_card():
    assert set(CARDS) == set(shipped_names()) == {"digits", "cifar10_cpu"}
    total = 0
    for name in CARDS:
        card, entry = _card(name), shipped_detector(name)
        archive = local_archive(name)
        assert archive == os.path.join(ROOT, "pretrained", card["archive"])
        assert card["archive"] == entry.file
        assert file_sha256(archive) == card["sha256"] == entry.sha256
        assert os.path.exists(os.path.join(ROOT, "pretrained", f"{name}.md"))
        total += os.path.getsize(archive)
    assert total <= 30 * 2**20  # 30 MB in all


@pytest.mark.parametrize("name", ["digits", "cifar10_cpu"])
def test_scores_on_the_cards_images(name, tmp_path):
    check = _card(name)["check"]
    lines = _run("-c", SCORE, name, check["images"], cache=str(tmp_path)).strip().splitlines()
    got, thresholds = json.loads(lines[-2]), json.loads(lines[-1])
    for detector, expected in check["scores"].items():
        np.testing.assert_allclose(got[detector], expected, rtol=1e-4, atol=1e-4, err_msg=detector)
    assert got["nn"] == check["nn"]
    assert thresholds == pytest.approx(_card(name)["thresholds"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits", "cifar10_cpu"])
def test_the_cards_protocol_reproduces_its_auroc(name, tmp_path):
    card = _card(name)
    protocol = card["protocol"]
    in_spec = _local(protocol["in_distribution"])
    if in_spec is None:
        pytest.skip(f"{protocol['in_distribution']} is not beside this checkout (../shared/data)")
    out = tmp_path / "eval"
    _run(
        "main.py", f"--workdir={name}", "--mode=eval", f"--in_distribution={in_spec}",
        f"--out={out}", cache=str(tmp_path / "cache"),
    )  # fmt: skip
    with open(out / "results.json") as f:
        results = json.load(f)
    assert results["num_in"] == protocol["num_in"] and results["ood"] == protocol["ood"]
    for detector, sets in card["auroc"].items():
        for set_name, metrics in sets.items():
            got = 100 * results["detectors"][detector][set_name]["auroc"]
            assert got == pytest.approx(metrics["auroc"], abs=0.02), (detector, set_name)
