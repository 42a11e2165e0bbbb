"""Benchmarks of semsad-jax, not part of the package: ``python -m benchmarks --help`` lists them."""
