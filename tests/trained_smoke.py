"""One trained (and one evaluated) smoke workdir per test process, shared by the eval-side tests.

``trained()`` runs ``run(smoke, wd, "encoder")`` then ``"discriminator"`` once;
``evaluated()`` copies it and runs ``"eval"`` once (with plots). Tests that write to a workdir take a
``copy_of(...)`` so the shared ones never change. Everything is removed when the process exits.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

from configs import smoke
from semsad_jax.evaluation.detector import Detector
from semsad_jax.run import run

_ROOT = tempfile.mkdtemp(prefix="semsad-smoke-")
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
_DONE: dict = {}


def config(**eval_fields):
    """The smoke config with ``eval`` fields overridden."""
    c = smoke.get_config()
    for key, value in eval_fields.items():
        c.eval[key] = value
    return c


def trained() -> str:
    """A smoke workdir with a finished encoder, feature bank and discriminator (do not modify)."""
    if "trained" not in _DONE:
        workdir = os.path.join(_ROOT, "trained")
        run(config(), workdir, "encoder")
        run(config(), workdir, "discriminator")
        _DONE["trained"] = workdir
    return _DONE["trained"]


def evaluated() -> str:
    """A copy of :func:`trained` after ``--mode=eval`` with plots (do not modify)."""
    if "evaluated" not in _DONE:
        workdir = copy_of(trained(), os.path.join(_ROOT, "evaluated"))
        run(config(plots=True), workdir, "eval")
        _DONE["evaluated"] = workdir
    return _DONE["evaluated"]


def detector():
    """A Detector restored from :func:`evaluated` (shared: do not modify)."""
    if "detector" not in _DONE:
        _DONE["detector"] = Detector.restore(evaluated())
    return _DONE["detector"]


def copy_of(workdir: str, destination) -> str:
    """A private copy of ``workdir`` at ``destination`` (without its lock file)."""
    destination = str(destination)
    shutil.copytree(workdir, destination, ignore=shutil.ignore_patterns(".lock"))
    return destination


def read_text(path) -> str:
    return Path(path).read_text()


def read_json(path):
    return json.loads(Path(path).read_text())
