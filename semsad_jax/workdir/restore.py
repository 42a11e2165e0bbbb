"""Loading a finished network (encoder or discriminator) back from a workdir's Orbax checkpoints.

Used by the discriminator stage (the encoder it builds on) and by evaluation and the
:class:`~semsad_jax.evaluation.detector.Detector` (both networks), which import nothing of training:
only the model parameters and BatchNorm statistics are restored, never the optimiser.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
from flax import nnx
from jax.sharding import Mesh

from semsad_jax.errors import SemsadError
from semsad_jax.models.build import build, split_model
from semsad_jax.parallel.mesh import make_mesh, replicated
from semsad_jax.workdir.checkpoints import StageCheckpoints
from semsad_jax.workdir.layout import TRAIN_DIGEST, Workdir, as_workdir

__all__ = ["RestoredNetwork", "check_bank_matches", "restore_network", "restore_stage"]


def abstract_network(kind: str, section: Any, dtype: Any, mesh: Mesh) -> tuple:
    """(graphdef, params, batch_stats) of ``kind`` as replicated ShapeDtypeStructs (nothing computed)."""
    model = nnx.eval_shape(lambda: build(kind, section, seed=0, dtype=dtype))
    graphdef, params, stats = split_model(model)
    sharding = replicated(mesh)
    as_abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    return graphdef, jax.tree.map(as_abstract, params), jax.tree.map(as_abstract, stats)


class RestoredNetwork(NamedTuple):
    """A finished network and what was restored: ``provenance`` = {"epochs", "total_steps",
    "restored_step", "identity_digest", "config_epochs"} (recorded in results.json)."""

    graphdef: nnx.GraphDef
    params: dict
    batch_stats: dict
    provenance: dict


def restore_stage(
    workdir: str | Workdir,
    stage: str,
    section: Any,
    identity: dict,
    *,
    dtype: Any = "float32",
    mesh: Mesh | None = None,
    hint: str | None = None,
) -> RestoredNetwork:
    """The finished ``stage`` network in ``workdir``, with its provenance.

    Args:
      stage: "encoder" or "discriminator"; section: its config section.
      identity: what the stage must have been trained with (workdir.layout.stage_identity).
      hint: advice for an identity mismatch (default: the matching config or --overwrite).
    Raises SemsadError when there is no finished stage, it was trained with another identity, the
    config asks for more epochs than it was trained for, or its checkpoint is missing.
    """
    wd = as_workdir(workdir)
    mesh = mesh or make_mesh()
    meta = wd.check_identity(stage, identity, hint=hint)
    if not (meta and meta.get("finished")):
        raise SemsadError(
            f"no trained {stage} in {wd.stage_dir(stage)}; run --mode={stage} with this "
            "--workdir first."
        )
    trained, wanted = int(meta["epochs"]), int(section.epochs)
    if wanted > trained:
        raise SemsadError(
            f"the {stage} in {wd.stage_dir(stage)} was trained for {trained} epochs but the config "
            f"asks for {wanted}; run --mode={stage} with this config to train it further, or set "
            f"--config.{stage}.epochs={trained}."
        )
    graphdef, params, stats = abstract_network(stage, section, dtype, mesh)
    checkpoints = StageCheckpoints(wd.stage_dir(stage), keep=int(section.keep_checkpoints))
    restored = checkpoints.restore_model(params, stats)
    checkpoints.close()
    if restored is None:
        raise SemsadError(
            f"the {stage} checkpoint in {wd.stage_dir(stage)} is missing; rerun --mode={stage}."
        )
    state, step = restored
    if step != int(meta["total_steps"]):
        raise SemsadError(
            f"the newest readable {stage} checkpoint in {wd.stage_dir(stage)} is step {step}, not "
            f"the finished step {meta['total_steps']}; rerun --mode={stage} to finish it."
        )
    provenance = {
        "epochs": trained,
        "total_steps": int(meta["total_steps"]),
        "restored_step": int(step),
        "identity_digest": meta.get("identity_digest"),
        "config_epochs": wanted,
    }
    return RestoredNetwork(graphdef, state["params"], state["batch_stats"], provenance)


def restore_network(
    workdir: str | Workdir, stage: str, section: Any, identity: dict, **options: Any
) -> tuple[nnx.GraphDef, dict, dict]:
    """(graphdef, params, batch_stats) of the finished ``stage`` network: :func:`restore_stage`
    (same arguments and options: dtype, mesh, hint) without the provenance."""
    return restore_stage(workdir, stage, section, identity, **options)[:3]


def check_bank_matches(workdir: str | Workdir) -> None:
    """SemsadError unless the feature bank comes from the encoder the discriminator trained on."""
    wd = as_workdir(workdir)
    bank = wd.read(wd.bank_json)
    meta = wd.stage_meta("discriminator") or {}
    if bank is not None and bank.get("encoder_digest") != meta.get("encoder_digest"):
        raise SemsadError(
            f"the feature bank in {wd.path} comes from another encoder than the discriminator; "
            "rerun --mode=discriminator --overwrite."
        )
    trained_on = meta.get("identity", {}).get(TRAIN_DIGEST)
    if bank is not None and trained_on is not None and bank.get("images_digest") != trained_on:
        raise SemsadError(
            f"the feature bank in {wd.path} holds other training images (digest "
            f"{bank.get('images_digest')}) than the discriminator was trained on ({trained_on}); "
            "rerun --mode=discriminator with the training data, or --overwrite."
        )
