"""semsad-jax command line: train the encoder, the discriminator, evaluate, score.

    python main.py --config=configs/cifar100.py --workdir=runs/c100 --mode=encoder
    python main.py --config=configs/cifar100.py --workdir=runs/c100 --mode=discriminator
    python main.py --config=configs/cifar100.py --workdir=runs/c100 --mode=eval

Any config field can be overridden: ``--config.encoder.epochs=3``. All logic lives in
``semsad_jax.pipeline`` so it can be used from Python and notebooks.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

MODES = ("encoder", "discriminator", "eval", "score", "all", "report")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, features, metrics and results.")
flags.DEFINE_enum("mode", "all", MODES, "What to run.")
flags.DEFINE_bool("overwrite", False, "Retrain a finished stage (the old one is kept aside).")
flags.DEFINE_multi_string("ood", [], "Extra OOD set for eval, NAME=SPEC (repeatable).")
flags.DEFINE_string("images", None, "Images to score with --mode=score (a source spec).")
flags.DEFINE_list("workdirs", [], "Workdirs to aggregate with --mode=report.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from semsad_jax import pipeline
    from semsad_jax.errors import SemsadError
    from semsad_jax.trainer import Interrupted

    try:
        pipeline.run(
            FLAGS.config,
            FLAGS.workdir,
            FLAGS.mode,
            overwrite=FLAGS.overwrite,
            ood=FLAGS.ood,
            images=FLAGS.images,
            workdirs=FLAGS.workdirs,
        )
    except SemsadError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
