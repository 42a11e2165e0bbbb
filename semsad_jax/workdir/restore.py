"""Loading a finished network (encoder or discriminator) back from a workdir's Orbax checkpoints.

Used by the discriminator stage (the encoder it builds on) and by evaluation and the
:class:`~semsad_jax.evaluation.detector.Detector` (both networks), which import nothing of training:
only the model parameters and BatchNorm statistics are restored, never the optimiser.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from semsad_jax.errors import SemsadError
from semsad_jax.models.build import build, split_model
from semsad_jax.parallel.mesh import make_mesh, replicated
from semsad_jax.workdir.checkpoints import StageCheckpoints
from semsad_jax.workdir.layout import Workdir, as_workdir

__all__ = ["check_bank_matches", "restore_network"]


def abstract_network(kind: str, section: Any, dtype: Any, mesh: Mesh) -> tuple:
    """(graphdef, params, batch_stats) of ``kind`` as replicated ShapeDtypeStructs (nothing computed)."""
    model = nnx.eval_shape(lambda: build(kind, section, seed=0, dtype=dtype))
    graphdef, params, stats = split_model(model)
    sharding = replicated(mesh)
    as_abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    return graphdef, jax.tree.map(as_abstract, params), jax.tree.map(as_abstract, stats)


def restore_network(
    workdir: str | Workdir,
    stage: str,
    section: Any,
    identity: dict,
    *,
    dtype: Any = "float32",
    mesh: Mesh | None = None,
    hint: str | None = None,
) -> tuple[nnx.GraphDef, dict, dict]:
    """(graphdef, params, batch_stats) of the finished ``stage`` network in ``workdir``.

    Args:
      stage: "encoder" or "discriminator"; section: its config section.
      identity: what the stage must have been trained with (workdir.layout.stage_identity).
      hint: advice for an identity mismatch (default: the matching config or --overwrite).
    Raises SemsadError when there is no finished stage, it was trained with another identity,
    or its checkpoint is missing.
    """
    wd = as_workdir(workdir)
    mesh = mesh or make_mesh()
    meta = wd.check_identity(stage, identity, hint=hint)
    if not (meta and meta.get("finished")):
        raise SemsadError(
            f"no trained {stage} in {wd.stage_dir(stage)}; run --mode={stage} with this "
            "--workdir first."
        )
    graphdef, params, stats = abstract_network(stage, section, dtype, mesh)
    checkpoints = StageCheckpoints(wd.stage_dir(stage), keep=int(section.keep_checkpoints))
    restored = checkpoints.restore_model(params, stats)
    checkpoints.close()
    if restored is None:
        raise SemsadError(
            f"the {stage} checkpoint in {wd.stage_dir(stage)} is missing; rerun --mode={stage}."
        )
    state, _ = restored
    return graphdef, state["params"], state["batch_stats"]


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
