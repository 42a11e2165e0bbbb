"""The modes in order, behind one function that main.py and notebooks call.

``run(config, workdir, mode)`` joins the other processes of a multi-process launch (and refuses one
started with another config or process count, :mod:`semsad_jax.parallel.launch`), takes the
workdir lock (process 0), checks that the stages it will run match what
the workdir holds, writes the resolved config to ``WORKDIR/config.json``, loads the data the mode
needs (each set decoded once) and runs the stage(s)::

    encoder -> discriminator -> eval        (``all`` runs the three in order)
    rotation     (the rotation detector's network, when ``rotation.enabled``; ``all`` trains it
                  after the discriminator)
    score   (needs a finished, evaluated workdir)    report (aggregates several workdirs)
    export  (an evaluated workdir as one detector archive, ``out``)

``eval`` and ``score`` also take a packaged detector instead of a workdir: an archive, its
https:// or file:// URL or a shipped name (:func:`semsad_jax.workdir.fetch.resolve_detector`
brings it into the cache once); its own config.json is the config unless one is given, and the
outputs go to ``out`` (default ``./NAME-eval``, ``./NAME-score``), never into the cache.

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
from semsad_jax.evaluation.detector import DETECTORS, check_detector
from semsad_jax.evaluation.evaluate import evaluate
from semsad_jax.evaluation.report import run_report
from semsad_jax.evaluation.score import score_images
from semsad_jax.train.discriminator import train_discriminator
from semsad_jax.train.encoder import train_encoder
from semsad_jax.train.rotation import train_rotation
from semsad_jax.train.stage import StageContext
from semsad_jax.workdir.archive import export_detector
from semsad_jax.workdir.fetch import package_name, resolve_detector
from semsad_jax.workdir.layout import Workdir, rotation_enabled, run_identities
from semsad_jax.workdir.restore import restore_network
from semsad_jax.workdir.shipped import shipped_names

log = logging.getLogger(__name__)
__all__ = ["DETECTORS", "MODES", "TRAINING_MODES", "run"]
MODES = ("encoder", "discriminator", "rotation", "eval", "score", "all", "report", "export")
TRAINS = {"encoder": ("encoder",), "discriminator": ("discriminator",), "rotation": ("rotation",)}
TRAINS["all"] = ("encoder", "discriminator", "rotation")  # rotation only when enabled
TRAINING_MODES = tuple(TRAINS)
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
    detector: str = "semsad",
    out: str | None = None,
    in_distribution: str | None = None,
) -> dict:
    """Runs ``mode`` on ``workdir``; returns the stage summaries by name.

    ``config`` may be None for eval, score and report (the workdir's or detector's own is used).
    ``detector``: whose score and threshold --mode=score writes; ``out``: where eval / score write
    (default: the workdir's eval/ and score/, ``./NAME-eval`` / ``./NAME-score`` for a packaged
    detector); ``in_distribution``: eval's in-distribution set instead of the config's.
    """
    _quiet_logs()
    if mode not in MODES:
        raise SemsadError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}.")
    check_detector(detector)  # before anything is downloaded or loaded
    if mode == "report":
        report_dir = "" if config is None else config.eval.report_dir
        return {"report": run_report(list(workdirs) or [workdir], report_dir)}
    if mode == "export":
        return {"export": _export(workdir, out)}
    if mode == "score" and not images:
        raise SemsadError("--mode=score needs --images=SPEC (e.g. folder:my_images).")
    trains = TRAINS.get(mode, ())
    packaged = None
    if trains:
        if config is None:
            raise SemsadError(f"--mode={mode} needs a config; pass --config=FILE or a config name.")
        trains = _stages_to_train(config, mode)
        wd = _check_workdir(workdir)
    else:  # eval / score read a workdir or a packaged detector (brought into the cache once)
        wd, packaged = _open_detector(workdir)
        config = wd.config() if config is None else config
        if packaged and out is None:
            out = os.path.abspath(f"{packaged}-{mode}")
    launch = parallel.initialize_distributed()
    if jax.process_index() > 0:  # one process tells the story; the others only warn
        logging.getLogger("semsad_jax").setLevel(logging.WARNING)
    flags = dict(
        workdir=workdir,
        mode=mode,
        overwrite=overwrite,
        ood=list(ood),
        images=images,
        detector=detector,
        out=out,
        in_distribution=in_distribution,
    )
    parallel.check_same_launch(_fingerprint(config, flags), launch)
    mesh = parallel.make_mesh()
    sets = DataSets(config.data, int(config.seed))
    # a training mode loads the training set first: the stages are tied to its content (digest)
    identities = run_identities(config, sets.train().digest if trains else None)
    results: dict = {}
    # a packaged detector is read-only (the cache): nothing to lock, nothing written there
    with contextlib.nullcontext() if packaged else _workdir_lock(wd):
        if trains:  # refuse a mismatch before config.json (or anything else) is written
            for stage in () if overwrite else trains:
                wd.check_identity(stage, identities[stage])
            if "discriminator" in trains and "encoder" not in trains:  # built on the encoder
                wd.check_identity("encoder", identities["encoder"], hint=ENCODER_HINT)
            wd.write(wd.config_json, config.to_dict())
            results.update(_train(config, wd, trains, identities, sets, mesh, overwrite))
        if mode in ("eval", "all"):
            results["eval"] = evaluate(
                config,
                wd,
                extra_ood=list(ood),
                mesh=mesh,
                sets=sets,
                out_dir=out,
                in_spec=in_distribution,
            )
        if mode == "score":
            results["score"] = score_images(
                config, wd, images, mesh=mesh, sets=sets, detector=detector, out_dir=out
            )
    return results


def _train(
    config: Any,
    wd: Workdir,
    trains: tuple[str, ...],
    identities: dict,
    sets: DataSets,
    mesh: Any,
    overwrite: bool,
) -> dict:
    """Trains the stages of ``trains`` in order (identities already checked)."""
    ctx = StageContext(
        workdir=wd,
        mesh=mesh,
        seed=int(config.seed),
        dtype=str(config.dtype),
        progress=bool(config.progress),
        tensorboard=bool(config.tensorboard),
        overwrite=overwrite,
        placement=str(config.data.get("placement", "auto")),
        identities_checked=True,  # by run, before anything was written
    )
    results = {}
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
    if "rotation" in trains:
        results["rotation"] = train_rotation(
            config.rotation, ctx, sets.train(), sets.test(), identity=identities["rotation"]
        )
    return results


def _stages_to_train(config: Any, mode: str) -> tuple[str, ...]:
    """The stages ``mode`` trains under ``config`` (``all``: the rotation network only when
    enabled); a one-line SemsadError for --mode=rotation with the rotation detector disabled."""
    if rotation_enabled(config):
        return TRAINS[mode]
    if mode == "rotation":
        raise SemsadError(
            "--mode=rotation: the rotation detector is disabled in this config; set "
            "--config.rotation.enabled=True (e.g. configs/class_split.py has it on)."
        )
    return tuple(stage for stage in TRAINS[mode] if stage != "rotation")


def _export(workdir: str | None, out: str | None) -> dict:
    """``--mode=export``: the evaluated workdir as one detector archive at ``out``."""
    if not out:
        raise SemsadError("--mode=export needs --out=FILE.tar.gz, where the archive goes.")
    if not workdir or not os.path.isdir(os.path.expanduser(workdir)):
        raise SemsadError(f"--workdir {workdir} is not a directory; pass a trained, evaluated one.")
    summary = export_detector(workdir, out)
    print(
        f"wrote {summary['path']} ({summary['bytes'] / 1e6:.1f} MB, sha256 {summary['sha256']}); "
        "restore it with semsad_jax.Detector.restore(PATH or URL)."
    )
    return {k: v for k, v in summary.items() if k != "manifest"}


def _open_detector(workdir: str | None) -> tuple[Workdir, str | None]:
    """(the workdir, None) for a directory; (its copy in the cache, a name for the outputs) for a
    detector archive, URL or shipped name."""
    if not workdir:
        raise SemsadError(
            "no --workdir given; pass a trained workdir, a detector archive, its URL or a shipped "
            "detector's name."
        )
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.isdir(path):
        return Workdir(path), None
    if "://" in workdir or os.path.isfile(path) or workdir in shipped_names():
        return Workdir(resolve_detector(workdir)), package_name(workdir)
    return _check_workdir(workdir), None  # a workdir (a missing one says what to train first)


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
