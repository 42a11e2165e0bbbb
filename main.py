"""semsad-jax command line: train the encoder, the discriminator, evaluate, score.

    python main.py --config=configs/cifar100.py --workdir=runs/c100 --mode=encoder
    python main.py --config=configs/cifar100.py --workdir=runs/c100 --mode=discriminator
    python main.py --config=configs/cifar100.py --workdir=runs/c100 --mode=eval

The same program as the console script ``semsad-jax`` and ``python -m semsad_jax`` (flags and
dispatch: :mod:`semsad_jax.cli`; the modes: :mod:`semsad_jax.run`, usable from Python and
notebooks). Any config field can be overridden: ``--config.encoder.epochs=3``.
"""

from semsad_jax.cli import main

if __name__ == "__main__":
    main()
