"""semsad-jax: SemSAD unsupervised out-of-distribution detection in JAX / Flax NNX.

``import semsad_jax`` stays cheap (no jax import); ``semsad_jax.Detector`` is loaded on first use.
"""

from semsad_jax._version import __version__ as __version__

__all__ = ["Detector"]


def __getattr__(name: str):
    if name == "Detector":
        from semsad_jax.evaluation.detector import Detector

        return Detector
    raise AttributeError(f"module 'semsad_jax' has no attribute {name!r}")
