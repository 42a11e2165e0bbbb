"""A run's workdir: its layout and JSON files (:mod:`.layout`), Orbax checkpoints
(:mod:`.checkpoints`), the feature bank (:mod:`.bank`) and restoring finished networks
(:mod:`.restore`)."""

from semsad_jax.workdir.layout import Workdir

__all__ = ["Workdir"]
