"""Orbax checkpoints of a training stage: save, resume, restore the model alone, damaged-save handling.

Layout of a stage directory (``WORKDIR/encoder/``, ``WORKDIR/discriminator/``)::

    <step>/state/...   Orbax CheckpointManager steps (the last K kept); the saved pytree is
                       {"params": ..., "batch_stats": ..., "opt_state": ...} of numpy/jax arrays
    stage.json         what was trained (workdir.layout): identity, total steps, finished flag
    metrics.jsonl      one JSON object per logged step (train.logs)

A checkpoint that cannot be read (half written, corrupted) is reported, moved aside to
``corrupt-<step>-<time>`` (never deleted) and the previous good one is used; when no checkpoint can
be read, nothing is moved and the restore stops with a clear error. A checkpoint whose tree, shapes
or dtypes differ from the model being restored is refused (never moved, never overwritten). The
unfinished save of a run killed while saving (``<step>.orbax-checkpoint-tmp``) is reported and
moved aside to ``unfinished-<step>-<time>`` before the first save of the next run.

A full disk (:mod:`semsad_jax.workdir.space`): each save first checks the free space against the
state's size; a save that still fails for want of space has its temporary directory removed and
stops the run with one line (:class:`~semsad_jax.errors.DiskFull`) naming the directory, the space
needed and the step a rerun resumes from. Committed checkpoints are never touched by a failed save.

Several processes: every process calls save and restore (Orbax writes one checkpoint together and
synchronises them); the moves aside are process 0's, followed by a barrier.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from semsad_jax.errors import SemsadError
from semsad_jax.parallel.launch import sync
from semsad_jax.workdir.space import (
    check_free,
    free_bytes,
    quiet_disk_full_logs,
    reporting_disk_full,
    tree_bytes,
)

log = logging.getLogger(__name__)
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


def _steps_on_disk(directory: str) -> list[int]:
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


class StageCheckpoints:
    """Saves and restores one stage's state with an Orbax ``CheckpointManager``.

    Args:
      directory: the stage directory (created if missing).
      keep: how many checkpoints to keep (the newest ``keep``).
      asynchronous: write in a background thread (Orbax async checkpointing).
    """

    def __init__(self, directory: str, *, keep: int = 3, asynchronous: bool = True):
        self.directory = os.path.abspath(directory)
        self.keep = keep
        self.asynchronous = asynchronous
        os.makedirs(self.directory, exist_ok=True)
        quiet_disk_full_logs()
        self._manager = self._new_manager()
        self._saved_before = False
        self._pending: tuple[int, int] | None = None  # (step, bytes) of the save in flight

    def _new_manager(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep,
            create=True,
            enable_async_checkpointing=self.asynchronous,
        )
        handlers = {"state": ocp.StandardCheckpointHandler()}
        return ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        """The newest finished checkpoint step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Saves ``state`` (a pytree of arrays) as ``step``; no-op if that step already exists.

        Raises :class:`~semsad_jax.errors.DiskFull` (one line) when the disk cannot hold it; the
        checkpoints committed before stay as they were.
        """
        if not self._saved_before:
            self._saved_before = True
            self._set_aside_unfinished()
        if step in self._manager.all_steps():
            return
        needed = tree_bytes(state)
        in_flight = self._pending[1] if self._pending else 0  # an earlier save still writing
        if free_bytes(self.directory) < needed + in_flight:
            self.wait()
            check_free(self.directory, needed, f"the checkpoint of step {step}", self._then())
        with self._reporting(step, needed):
            self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        self._pending = (step, needed)

    def wait(self) -> None:
        """Blocks until every asynchronous save has been committed to disk (DiskFull if a save
        in flight failed for want of space)."""
        step, needed = self._pending or (None, 0)
        with self._reporting(step, needed):
            self._manager.wait_until_finished()
        self._pending = None

    def close(self) -> None:
        self.wait()
        self._manager.close()

    def _then(self) -> str:
        done = _steps_on_disk(self.directory)
        where = f"from step {done[-1]}" if done else "from the start"
        return f"rerun the same command to resume {where}"

    def _reporting(self, step: int | None, needed: int):
        what = "the checkpoint" + (f" of step {step}" if step is not None else "")
        tmp = lambda: [
            os.path.join(self.directory, n) for n in os.listdir(self.directory) if _TMP_SUFFIX in n
        ]
        return reporting_disk_full(self.directory, needed, what, self._then(), cleanup=tmp)

    def saved_tree(self, step: int) -> Any:
        """The array metadata (shape, dtype) of checkpoint ``step``'s state, as a pytree; raises
        whatever Orbax raises for unreadable metadata."""
        saved = self._manager.item_metadata(step)["state"]
        return getattr(saved, "tree", saved)

    def saved_abstract(self, step: int, sharding: Any, part: str | None = None) -> Any:
        """``jax.ShapeDtypeStruct`` s (on ``sharding``) of checkpoint ``step``'s state, or of its
        ``part`` ("opt_state", ...): a target to restore it with its recorded shapes."""
        saved = self.saved_tree(step)
        return jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding),
            dict(saved) if part is None else saved[part],
            is_leaf=lambda x: hasattr(x, "shape"),
        )

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, int] | None:
        """Restores the newest readable checkpoint (or exactly ``step``) into the shape of ``target``.

        Args:
          target: a pytree of arrays or ``jax.ShapeDtypeStruct`` (with shardings) giving structure,
            shapes, dtypes and placement.
          step: a specific step; None = newest readable.
        Returns:
          (state, step), or None when there is no checkpoint at all.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
        unreadable: list[tuple[int, Exception]] = []
        for candidate in steps:
            try:
                saved = self.saved_tree(candidate)
                if not jax.tree.leaves(saved, is_leaf=lambda x: hasattr(x, "shape")):
                    raise ValueError("its metadata lists no arrays")
            except Exception as err:  # unreadable metadata: a half-written or damaged checkpoint
                unreadable.append((candidate, err))
                continue
            problem = _tree_mismatch(saved, abstract)
            if problem:
                raise SemsadError(
                    f"checkpoint {self.directory}/{candidate} does not match this config's model "
                    f"({problem}); use the config it was trained with, or another --workdir."
                )
            try:
                restored = self._manager.restore(
                    candidate, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
                )
            except Exception as err:  # any read/decode failure means "damaged checkpoint"
                unreadable.append((candidate, err))
                continue
            for bad, err in unreadable:
                self._set_aside(bad, err)
            return restored["state"], candidate
        if unreadable:
            bad, err = unreadable[0]
            raise SemsadError(
                f"no checkpoint in {self.directory} can be read (step {bad}: {_first_line(err)}); "
                f"nothing was moved. Free memory/disk and retry, or move {self.directory} aside "
                f"to train this stage from scratch."
            )
        return None

    def restore_model(self, params: Any, batch_stats: Any) -> tuple[dict, int] | None:
        """Restores the newest readable checkpoint's ``params`` and ``batch_stats`` only.

        The optimiser state is read with the shapes recorded in the checkpoint and dropped, so a
        finished model can be restored without knowing the optimiser it was trained with.
        ``params`` / ``batch_stats``: the model's trees (arrays or ShapeDtypeStructs with
        shardings). Returns ({"params", "batch_stats"}, step) or None when there is no checkpoint.
        """
        step = self.latest_step()
        if step is None:
            return None
        sharding = jax.tree.leaves(params)[0].sharding
        try:
            opt_state = self.saved_abstract(step, sharding, "opt_state")
        except Exception:  # unreadable metadata: let restore() report and set it aside
            opt_state = {}
        target = {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}
        restored = self.restore(target)
        if restored is None:
            return None
        state, step = restored
        return {"params": state["params"], "batch_stats": state["batch_stats"]}, step

    def _set_aside(self, step: int, err: Exception) -> None:
        src = os.path.join(self.directory, str(step))
        dst = _free_name(os.path.join(self.directory, f"corrupt-{step}-{int(time.time())}"))
        log.warning(
            "checkpoint %s is unreadable (%s); moved it to %s and using the previous one",
            src,
            _first_line(err),
            dst,
        )
        if jax.process_index() == 0 and os.path.exists(src):
            os.replace(src, dst)
        sync(f"set aside {src}")  # the other processes reload after process 0 moved it
        self._manager.reload()

    def _set_aside_unfinished(self) -> None:
        """Moves the temporary directories of saves that never finished (process killed) aside."""
        for name in sorted(os.listdir(self.directory)) if jax.process_index() == 0 else []:
            if _TMP_SUFFIX not in name:
                continue
            src = os.path.join(self.directory, name)
            step = name.split(_TMP_SUFFIX)[0]
            dst = _free_name(os.path.join(self.directory, f"unfinished-{step}-{int(time.time())}"))
            log.warning(
                "found the unfinished save %s (a run killed while saving); moved it to %s",
                src,
                dst,
            )
            os.replace(src, dst)
        sync(f"set aside unfinished saves in {self.directory}")


def _free_name(path: str) -> str:
    """``path``, or ``path-1``, ``path-2``, ... whichever does not exist yet."""
    candidate, count = path, 0
    while os.path.exists(candidate):
        count += 1
        candidate = f"{path}-{count}"
    return candidate


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def _tree_mismatch(saved: Any, abstract: Any) -> str | None:
    """How the saved tree of array metadata differs from the target's, or None if it matches."""

    def name(key: Any) -> str:  # dict key, attribute or index alike: Orbax stores all as str
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    def leaves(tree: Any) -> dict[str, Any]:
        flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
        return {"/".join(name(k) for k in path): leaf for path, leaf in flat[0]}

    have, want = leaves(saved), leaves(abstract)
    if have.keys() != want.keys():
        extra, missing = sorted(have.keys() - want.keys()), sorted(want.keys() - have.keys())
        if missing:
            return f"it lacks {len(missing)} of the model's arrays, e.g. {missing[0]}"
        return f"it has {len(extra)} arrays the model lacks, e.g. {extra[0]}"
    for key, leaf in want.items():
        old = have[key]
        if tuple(old.shape) != tuple(leaf.shape) or np.dtype(old.dtype) != np.dtype(leaf.dtype):
            return (
                f"{key} saved as {old.dtype}{list(old.shape)}, the model has "
                f"{leaf.dtype}{list(leaf.shape)}"
            )
    return None
