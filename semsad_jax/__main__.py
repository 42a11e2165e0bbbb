"""``python -m semsad_jax``: the command line of :mod:`semsad_jax.cli` (the same as ``semsad-jax``)."""

from semsad_jax.cli import main

if __name__ == "__main__":
    main()
