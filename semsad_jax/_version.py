"""The package's version, in one place (``semsad_jax.__version__``, results.json "versions")."""

__version__ = "0.1.0"
