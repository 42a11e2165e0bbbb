"""Every path and JSON file of a workdir, defined once (the lock itself is :mod:`semsad_jax.workdir.lock`).

A workdir holds one run::

    config.json               the resolved config (written once the stages' identities are checked)
    .lock                     flock held by the process that writes (workdir.lock)
    encoder/                  Orbax checkpoints, stage.json, metrics.jsonl   (train.encoder)
    bank/                     bank.json and the Orbax arrays                  (workdir.bank)
    discriminator/            as encoder/                                     (train.discriminator)
    rotation/                 as encoder/ (with rotation.enabled)              (train.rotation)
    eval/                     results.json, results.txt, scores.npz, hist_semsad.png, roc.png
    score/scores.csv          --mode=score

:class:`Workdir` names these paths and reads each JSON file at most once per object (a write
updates what it remembers), so one run that passes its Workdir along reads every file once.

What identifies a stage, and the refusal of another, live in :mod:`semsad_jax.workdir.identity`
(re-exported here).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax

from semsad_jax.data.cache import atomic_write
from semsad_jax.errors import SemsadError
from semsad_jax.parallel.launch import sync
from semsad_jax.workdir.identity import (  # noqa: F401 (re-exported: the workdir's face)
    DATA_KEYS,
    IDENTITY_VERSION,
    RUN_ONLY_KEYS,
    TRAIN_DIGEST,
    _plain,
    identity_diff,
    identity_digest,
    identity_problem,
    run_identities,
    stage_identity,
)
from semsad_jax.workdir.lock import WorkdirLock
from semsad_jax.workdir.space import reporting_disk_full

log = logging.getLogger(__name__)

STAGES = ("encoder", "discriminator")
CONFIG_JSON = "config.json"
STAGE_JSON = "stage.json"
METRICS_JSONL = "metrics.jsonl"
BANK = "bank"
EVAL = "eval"
SCORE = "score"
# The files of eval/ (--mode=eval).
RESULTS_JSON, RESULTS_TXT, SCORES_NPZ = "results.json", "results.txt", "scores.npz"
HIST_PNG, ROC_PNG = "hist_semsad.png", "roc.png"


def rotation_enabled(config: Any) -> bool:
    """Whether ``config`` trains and scores the rotation detector (``rotation.enabled``; a config
    without a ``rotation`` section, e.g. one written before it existed: no)."""
    section = getattr(config, "rotation", None)
    return bool(section is not None and section.get("enabled", False))


def trained_stages(config: Any) -> tuple[str, ...]:
    """The stages a trained workdir of ``config`` holds: encoder, discriminator (and rotation)."""
    return STAGES + (("rotation",) if rotation_enabled(config) else ())


class ConfigView(dict):
    """A nested config dict (e.g. WORKDIR/config.json) with attribute access, like a ConfigDict.

    Lets a detector be restored where ml_collections is not installed.
    """

    def __init__(self, mapping: dict):
        super().__init__(
            {k: ConfigView(v) if isinstance(v, dict) else v for k, v in mapping.items()}
        )

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, ConfigView) else v for k, v in self.items()}


def read_json(path: str) -> dict | None:
    """The JSON object at ``path``, or None if missing; a clear error if it is unreadable."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise SemsadError(f"{path} is unreadable ({err}); restore or delete it.") from None


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON atomically (temporary file, then rename); process 0 only."""
    if jax.process_index() != 0:
        return
    text = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    write_file(path, lambda f: f.write(text), len(text))


def write_file(path: str, write: Callable[[Any], Any], needed: int = 0) -> None:
    """``write(binary file)`` into a temporary file, then renamed to ``path`` (so ``path`` is
    either the old file or the whole new one; :func:`~semsad_jax.data.cache.atomic_write` removes
    the temporary file of a failed write). A full disk raises
    :class:`~semsad_jax.errors.DiskFull` naming ``path`` and ``needed`` bytes."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with reporting_disk_full(path, needed, os.path.basename(path)):
        atomic_write(path, write)


def move_aside(path: str) -> str | None:
    """Renames ``path`` to ``path.old-<time>`` (never deletes); returns the new name or None."""
    if not os.path.exists(path) or jax.process_index() != 0:
        return None
    dst = f"{path}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(path, dst)
    log.warning("moved %s to %s", path, dst)
    return dst


class Workdir:
    """The files of one workdir; JSON files are read at most once per object.

    Args:
      path: the workdir (``~`` expanded, made absolute). Nothing is created until something is
        written.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(os.path.expanduser(str(path)))
        self._json: dict[str, dict | None] = {}

    def __repr__(self) -> str:
        return f"Workdir({self.path!r})"

    # ---- paths ----------------------------------------------------------------------------
    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @property
    def config_json(self) -> str:
        return self.join(CONFIG_JSON)

    @property
    def lock_path(self) -> str:
        return self.join(".lock")

    def stage_dir(self, stage: str) -> str:
        return self.join(stage)

    def stage_json(self, stage: str) -> str:
        return self.join(stage, STAGE_JSON)

    def metrics_jsonl(self, stage: str) -> str:
        return self.join(stage, METRICS_JSONL)

    @property
    def bank_dir(self) -> str:
        return self.join(BANK)

    @property
    def bank_json(self) -> str:
        return self.join(BANK, "bank.json")

    @property
    def bank_arrays(self) -> str:
        return self.join(BANK, "arrays")

    @property
    def eval_dir(self) -> str:
        return self.join(EVAL)

    def eval_file(self, name: str) -> str:
        """``eval/<name>``: results.json, results.txt, scores.npz, hist_semsad.png, roc.png."""
        return self.join(EVAL, name)

    @property
    def results_json(self) -> str:
        return self.eval_file(RESULTS_JSON)

    @property
    def scores_npz(self) -> str:
        return self.eval_file(SCORES_NPZ)

    @property
    def scores_csv(self) -> str:
        return self.join(SCORE, "scores.csv")

    # ---- JSON files, each read once ---------------------------------------------------------
    def read(self, path: str) -> dict | None:
        """The JSON object at ``path`` (remembered after the first read), or None if missing."""
        if path not in self._json:
            self._json[path] = read_json(path)
        return self._json[path]

    def write(self, path: str, obj: dict) -> None:
        """Writes ``obj`` atomically (process 0) and remembers it."""
        write_json(path, obj)
        self._json[path] = _plain(obj)

    def forget(self, path: str) -> None:
        """Drops what is remembered about ``path`` (after the file was removed or moved)."""
        self._json.pop(path, None)

    def stage_meta(self, stage: str) -> dict | None:
        """``<stage>/stage.json``: identity, total_steps, finished, summary; None before training."""
        return self.read(self.stage_json(stage))

    def is_finished(self, stage: str) -> bool:
        return bool((self.stage_meta(stage) or {}).get("finished"))

    def config(self) -> ConfigView:
        """The resolved config the workdir was trained with (config.json)."""
        config = self.read(self.config_json)
        if config is None:
            raise SemsadError(
                f"{self.config_json} is missing; pass the workdir of a trained run "
                "(--mode=encoder writes it)."
            )
        return ConfigView(config)

    def threshold(self, detector: str = "semsad") -> float | None:
        """The ``eval.tpr`` threshold stored by --mode=eval, or None if eval has not run."""
        results = self.read(self.results_json)
        return None if results is None else float(results["threshold_95"][detector])

    # ---- stages -----------------------------------------------------------------------------
    def check_identity(self, stage: str, identity: dict, *, hint: str | None = None) -> dict | None:
        """The recorded stage.json of ``stage`` (None for a new stage), if it matches ``identity``.

        Raises a one-line SemsadError naming every differing key otherwise. ``hint`` replaces the
        default advice (use the matching config, another --workdir, or --overwrite).
        """
        meta = self.stage_meta(stage)
        if meta is None:
            return None
        held = f"{self.stage_dir(stage)} holds {'an' if stage[0] in 'aeiou' else 'a'} {stage}"
        problem = identity_problem(held, stage, meta, identity, hint)
        if problem:
            raise SemsadError(problem)
        return meta

    def open_stage(
        self, stage: str, identity: dict, overwrite: bool, *, check: bool = True
    ) -> dict | None:
        """The recorded metadata of a stage that may be resumed or reused, or None for a fresh one.

        Refuses a stage trained with another identity (:meth:`check_identity`; ``check=False``:
        the caller has checked it already); with ``overwrite`` the old stage directory is moved
        aside (never deleted) and the stage starts afresh.
        """
        if overwrite:
            if self.stage_meta(stage) is not None or os.path.isdir(self.stage_dir(stage)):
                move_aside(self.stage_dir(stage))
                self.forget(self.stage_json(stage))
            sync(f"overwrite {self.stage_dir(stage)}")  # every process, moved or not
            return None
        return self.check_identity(stage, identity) if check else self.stage_meta(stage)

    def check_trained(self, stages: tuple[str, ...] = STAGES) -> None:
        """SemsadError unless every stage of ``stages`` finished training."""
        for stage in stages:
            if not self.is_finished(stage):
                raise SemsadError(
                    f"no trained {stage} in {self.path}; run --mode={stage} with this --workdir "
                    "first."
                )

    def lock(self) -> WorkdirLock:
        return WorkdirLock(self.path)


def as_workdir(workdir: str | Workdir) -> Workdir:
    """``workdir`` itself, or a :class:`Workdir` for a path."""
    return workdir if isinstance(workdir, Workdir) else Workdir(workdir)
