"""The modes in order, behind one function that main.py and notebooks call.

``run(config, workdir, mode)`` joins the other processes of a multi-process launch (and refuses one
started with another config or process count, :mod:`semsad_jax.parallel.launch`), takes the
workdir lock (process 0), checks that the stages it will run match what
the workdir holds, writes the resolved config to ``WORKDIR/config.json``, loads the data the mode
needs (each set decoded once) and runs the stage(s)::

    encoder -> discriminator -> eval        (``all`` runs the three in order)
    score   (needs a finished, evaluated workdir)    report (aggregates several workdirs)

Who reads which part of the config:

* the training stages take their own section (``train_encoder(config.encoder, ...)``,
  ``train_discriminator(config.discriminator, ...)``) and the run's settings (``seed``, ``dtype``,
  ``progress``, ``tensorboard``, ``data.placement``) in one :class:`StageContext`; the data
  section goes to :class:`DataSets`;
* ``run_report`` takes ``eval.report_dir``;
* ``run_identities``, ``evaluate``, ``score_images`` and the ``Detector`` take the whole config:
  they use every section (a stage's identity is its section, ``data``, ``seed`` and ``dtype``, and
  the discriminator's includes the encoder's; evaluation restores both networks under those
  identities, loads ``data``, scores with ``eval`` and records the whole config in results.json).

The stages' identities are checked here, once, before anything is written (config.json included);
the stage runner trusts that check (``StageContext.identities_checked``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import jax

from semsad_jax import parallel
from semsad_jax.data.sets import DataSets
from semsad_jax.errors import SemsadError
from semsad_jax.evaluation.evaluate import evaluate
from semsad_jax.evaluation.report import run_report
from semsad_jax.evaluation.score import score_images
from semsad_jax.train.discriminator import train_discriminator
from semsad_jax.train.encoder import train_encoder
from semsad_jax.train.stage import StageContext
from semsad_jax.workdir.layout import Workdir, run_identities
from semsad_jax.workdir.restore import restore_network

log = logging.getLogger(__name__)
MODES = ("encoder", "discriminator", "eval", "score", "all", "report")
TRAINS = {"encoder": ("encoder",), "discriminator": ("discriminator",)}
TRAINS["all"] = TRAINS["encoder"] + TRAINS["discriminator"]
ENCODER_HINT = (
    "use the config it was trained with, or retrain it first with --mode=encoder --overwrite"
)


def _check_workdir(workdir: str | None) -> Workdir:
    if not workdir:
        raise SemsadError("no --workdir given; pass --workdir=DIR (created if missing).")
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise SemsadError(f"--workdir {path} exists and is not a directory; choose another.")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise SemsadError(
            f"cannot create --workdir {path} ({err.strerror}); choose a writable directory."
        ) from None
    return Workdir(path)


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("absl", "jax._src.xla_bridge", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
    _quiet_logs()
    if mode not in MODES:
        raise SemsadError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}.")
    if mode == "report":
        return {"report": run_report(list(workdirs) or [workdir], config.eval.report_dir)}
    if mode == "score" and not images:
        raise SemsadError("--mode=score needs --images=SPEC (e.g. folder:my_images).")
    launch = parallel.initialize_distributed()
    if jax.process_index() > 0:  # one process tells the story; the others only warn
        logging.getLogger("semsad_jax").setLevel(logging.WARNING)
    flags = dict(workdir=workdir, mode=mode, overwrite=overwrite, ood=list(ood), images=images)
    parallel.check_same_launch(_fingerprint(config, flags), launch)
    wd = _check_workdir(workdir)
    mesh = parallel.make_mesh()
    sets = DataSets(config.data, int(config.seed))
    trains = TRAINS.get(mode, ())
    # a training mode loads the training set first: the stages are tied to its content (digest)
    identities = run_identities(config, sets.train().digest if trains else None)
    ctx = StageContext(
        workdir=wd,
        mesh=mesh,
        seed=int(config.seed),
        dtype=str(config.dtype),
        progress=bool(config.progress),
        tensorboard=bool(config.tensorboard),
        overwrite=overwrite,
        placement=str(config.data.get("placement", "auto")),
        identities_checked=True,  # below, before anything is written
    )
    results: dict = {}
    with _workdir_lock(wd):
        if trains:  # refuse a mismatch before config.json (or anything else) is written
            for stage in () if overwrite else trains:
                wd.check_identity(stage, identities[stage])
            if "encoder" not in trains:  # the discriminator builds on the workdir's encoder
                wd.check_identity("encoder", identities["encoder"], hint=ENCODER_HINT)
            wd.write(wd.config_json, config.to_dict())
        if "encoder" in trains:
            results["encoder"] = train_encoder(
                config.encoder,
                ctx,
                sets.train(),
                sets.test(),
                identity=identities["encoder"],
            )
        if "discriminator" in trains:
            encoder = restore_network(
                wd,
                "encoder",
                config.encoder,
                identities["encoder"],
                dtype=config.dtype,
                mesh=mesh,
                hint=ENCODER_HINT,
            )
            results["discriminator"] = train_discriminator(
                config.discriminator,
                ctx,
                sets.train(),
                encoder,
                sets.test(),
                identity=identities["discriminator"],
                encoder_identity=identities["encoder"],
            )
        if mode in ("eval", "all"):
            results["eval"] = evaluate(config, wd, extra_ood=list(ood), mesh=mesh, sets=sets)
        if mode == "score":
            results["score"] = score_images(config, wd, images, mesh=mesh, sets=sets)
    return results


def _fingerprint(config: Any, flags: dict) -> str:
    """What every process of a multi-process run must agree on: the resolved config and flags."""
    return json.dumps({"config": config.to_dict(), **flags}, sort_keys=True, default=str)


@contextlib.contextmanager
def _workdir_lock(wd: Workdir) -> Iterator[None]:
    """Process 0 holds the workdir's lock for the whole run (one lock per workdir, however many
    processes); every process learns whether it got it, so all refuse together."""
    with contextlib.ExitStack() as stack:
        refused = None
        if jax.process_index() == 0:
            try:
                stack.enter_context(wd.lock())
            except SemsadError as err:
                refused = err
        if not parallel.all_agree(refused is None)[0]:
            raise refused or SemsadError(
                f"workdir {wd.path} is in use by another run (process 0 could not lock it); wait "
                "for it to finish or use another --workdir."
            )
        yield
