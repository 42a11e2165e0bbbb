"""Benchmarks of semsad-jax (throughput, PyTorch peer, CIFAR-10 quality); not part of the package."""
