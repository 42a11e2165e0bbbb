"""semsad-jax command line: train the encoder, the discriminator, evaluate, score.

    python main.py --config=configs/cifar100.py --workdir=runs/c100 --mode=encoder
    python main.py --config=configs/cifar100.py --workdir=runs/c100 --mode=discriminator
    python main.py --config=configs/cifar100.py --workdir=runs/c100 --mode=eval

Any config field can be overridden: ``--config.encoder.epochs=3``. All logic lives in
``semsad_jax.run`` so it can be used from Python and notebooks.
"""

import sys
import traceback

import jax
from absl import app, flags
from ml_collections import config_flags

from semsad_jax.errors import SemsadError
from semsad_jax.parallel import leave, lost_peer
from semsad_jax.run import MODES, run
from semsad_jax.train.loop import Interrupted

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, features, metrics and results.")
flags.DEFINE_enum("mode", "all", MODES, "What to run.")
flags.DEFINE_bool("overwrite", False, "Retrain a finished stage (the old one is kept aside).")
flags.DEFINE_multi_string("ood", [], "Extra OOD set for eval, NAME=SPEC (repeatable).")
flags.DEFINE_string("images", None, "Images to score with --mode=score (a source spec).")
flags.DEFINE_list("workdirs", [], "Workdirs to aggregate with --mode=report.")


def _fail(message: str) -> None:
    """Prints one ``error:`` line on stderr and exits with status 2 (a user-fixable problem)."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing where a bad flag, override value or config file is one error line."""
    try:
        rest = FLAGS(argv)
        FLAGS.config.get("seed")  # a config file that failed to load raises here
    except flags.Error as err:
        _fail(f"{str(err).rstrip('.')}; see --helpfull.")
    except (AttributeError, KeyError) as err:  # an override naming a field the config lacks
        field = str(err).strip("\"'")
        _fail(f"the config has no field {field!r}; check the --config.FIELD overrides.")
    except OSError as err:  # ml_collections could not load the config file
        text = " ".join(str(err).split()).split("Attempted [Relative path]:")[-1].strip()
        _fail(f"cannot load --config ({text}); check the config file path.")
    if len(rest) > 1:
        _fail(f"unexpected arguments: {' '.join(rest[1:])}; flags look like --mode=encoder.")
    return rest


def main(argv):
    del argv  # checked by parse_flags
    try:
        run(
            FLAGS.config,
            FLAGS.workdir,
            FLAGS.mode,
            overwrite=FLAGS.overwrite,
            ood=FLAGS.ood,
            images=FLAGS.images,
            workdirs=FLAGS.workdirs,
        )
    except SemsadError as err:
        leave(f"error: {err}", 2)
    except Interrupted as err:
        leave(f"interrupted: {err}", 130)
    except KeyboardInterrupt:
        leave(
            "interrupted: stopped by Ctrl-C before a checkpoint could be saved; rerun the same "
            "command to resume from the last checkpoint.",
            130,
        )
    except Exception as err:  # a peer process of a multi-process run is gone: one line, no hang
        message = lost_peer(err)
        if message is None and not jax.distributed.is_initialized():
            raise
        if message is None:  # any other failure of one process: say so, and do not hang
            traceback.print_exc()
            message = f"this process failed ({type(err).__name__}); see the traceback above."
        leave(f"error: {message}", 3)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=parse_flags)
