"""The stages in order, behind one function that main.py and notebooks call.

``run(config, workdir, mode)`` takes the workdir lock, writes the resolved config to
``WORKDIR/config.json``, loads the data the mode needs and runs the stage(s):

    encoder -> discriminator -> eval        (``all`` runs the three in order)
    score   (needs a finished discriminator) report (aggregates several workdirs)
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax

from semsad_jax import parallel
from semsad_jax.checkpoints import WorkdirLock, write_json
from semsad_jax.data import ImageSet, contaminate, load_images
from semsad_jax.errors import SemsadError

log = logging.getLogger(__name__)
MODES = ("encoder", "discriminator", "eval", "score", "all", "report")


def load_set(config: Any, spec: str) -> ImageSet:
    """Loads ``spec`` at ``config.data.image_size`` with the config's cache and corrupt-image policy."""
    d = config.data
    return load_images(
        spec,
        int(d.image_size),
        cache_dir=d.get("cache_dir") or None,
        on_corrupt=d.get("on_corrupt", "skip"),
    )


def load_train_set(config: Any) -> ImageSet:
    """The training set, contaminated with ``data.contamination`` of outliers when configured."""
    train = load_set(config, config.data.train)
    frac = float(config.data.get("contamination", 0.0))
    if frac > 0:
        if not config.data.get("contamination_source"):
            raise SemsadError("data.contamination > 0 needs data.contamination_source (a spec).")
        outliers = load_set(config, config.data.contamination_source)
        train = contaminate(train, outliers, frac, int(config.seed))
    return train


def load_test_set(config: Any) -> ImageSet | None:
    return load_set(config, config.data.test) if config.data.get("test") else None


def _check_workdir(workdir: str | None) -> str:
    if not workdir:
        raise SemsadError("no --workdir given; pass --workdir=DIR (created if missing).")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise SemsadError(f"--workdir {workdir} exists and is not a directory; choose another.")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as err:
        raise SemsadError(
            f"cannot create --workdir {workdir} ({err.strerror}); choose a writable directory."
        ) from None
    return workdir


def run(
    config: Any,
    workdir: str | None,
    mode: str,
    *,
    overwrite: bool = False,
    ood: list[str] | tuple[str, ...] = (),
    images: str | None = None,
    workdirs: list[str] | tuple[str, ...] = (),
) -> dict:
    """Runs ``mode`` on ``workdir``; returns the stage summaries by name."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("absl", "jax._src.xla_bridge", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if mode not in MODES:
        raise SemsadError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}.")
    if mode == "report":
        from semsad_jax import report

        return {"report": report.run_report(list(workdirs) or [workdir], config)}
    parallel.maybe_initialize_distributed()
    workdir = _check_workdir(workdir)
    mesh = parallel.make_mesh()
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else _NoLock()
    results: dict = {}
    with lock:
        if mode in ("encoder", "discriminator", "all"):
            write_json(os.path.join(workdir, "config.json"), config.to_dict())
        if mode in ("encoder", "all"):
            from semsad_jax.train_encoder import train_encoder

            train, test = load_train_set(config), load_test_set(config)
            results["encoder"] = train_encoder(
                config, workdir, train, test, mesh=mesh, overwrite=overwrite
            )
        if mode in ("discriminator", "all"):
            from semsad_jax.train_discriminator import train_discriminator

            results["discriminator"] = train_discriminator(
                config, workdir, load_train_set(config), mesh=mesh, overwrite=overwrite
            )
        if mode in ("eval", "all"):
            from semsad_jax.evaluate import evaluate

            results["eval"] = evaluate(config, workdir, extra_ood=list(ood), mesh=mesh)
        if mode == "score":
            from semsad_jax.evaluate import score_images

            if not images:
                raise SemsadError("--mode=score needs --images=SPEC (e.g. folder:my_images).")
            results["score"] = score_images(config, workdir, images, mesh=mesh)
    return results


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None
