"""semsad-jax: SemSAD unsupervised out-of-distribution detection in JAX / Flax NNX.

``import semsad_jax`` stays cheap (no jax import); ``semsad_jax.Detector`` is loaded on first use.
"""

__version__ = "0.1.0"
__all__ = ["Detector"]


def __getattr__(name: str):
    if name == "Detector":
        from semsad_jax.evaluation.detector import Detector

        return Detector
    raise AttributeError(f"module 'semsad_jax' has no attribute {name!r}")
