"""semsad-jax command line: train the encoder, the discriminator, evaluate, score.

    semsad-jax --config=cifar100 --workdir=runs/c100 --mode=encoder
    semsad-jax --config=cifar100 --workdir=runs/c100 --mode=discriminator
    semsad-jax --config=cifar100 --workdir=runs/c100 --mode=eval
    semsad-jax --workdir=cifar10_cpu --mode=score --images=folder:my_photos --detector=knn

The same flags and modes as ``python main.py`` and ``python -m semsad_jax``. ``--config`` is a
config file (``configs/cifar100.py``, ``my_config.py:arg``) or the short name of a config that
ships with the package (``cifar100``, ``class_split:animals``, ``digits``). Any config field can be
overridden: ``--config.encoder.epochs=3``. With --mode=eval or --mode=score, ``--workdir`` may also
be a detector archive, its https:// or file:// URL, or the name of a shipped detector (``digits``,
``cifar10_cpu``); ``--config`` is then optional (the detector's own is used).
"""

from __future__ import annotations

import os
import sys
import traceback

import jax
from absl import app, flags
from ml_collections import config_flags

import semsad_jax.configs
from semsad_jax.errors import SemsadError
from semsad_jax.parallel import leave, lost_peer
from semsad_jax.run import DETECTORS, MODES, TRAINING_MODES, run
from semsad_jax.train.loop import Interrupted

FLAGS = flags.FLAGS
_OWN_FLAGS = []
_HELP = {"--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml"}


def _flag(define, name, *args, **kwargs):
    define(name, *args, **kwargs)
    _OWN_FLAGS.append(name)


def _define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Config: a file (configs/cifar100.py, FILE.py:ARG) or a shipped config's name "
        f"({', '.join(config_names())}).",
        lock_config=True,
    )
    _OWN_FLAGS.append("config")
    _flag(
        flags.DEFINE_string,
        "workdir",
        None,
        "Directory for checkpoints, features, metrics and results. With --mode=eval/score also a "
        "detector archive, its https:// or file:// URL, or a shipped detector's name.",
    )
    _flag(flags.DEFINE_enum, "mode", "all", MODES, "What to run.")
    _flag(
        flags.DEFINE_bool,
        "overwrite",
        False,
        "Retrain a finished stage (the old one is kept aside).",
    )
    _flag(flags.DEFINE_multi_string, "ood", [], "Extra OOD set for eval, NAME=SPEC (repeatable).")
    _flag(flags.DEFINE_string, "images", None, "Images to score with --mode=score (a source spec).")
    _flag(flags.DEFINE_list, "workdirs", [], "Workdirs to aggregate with --mode=report.")
    _flag(
        flags.DEFINE_enum,
        "detector",
        "semsad",
        DETECTORS,
        "Which detector's score and threshold --mode=score writes (knn, mahalanobis and "
        "pixels_knn use the same trained encoder and bank).",
    )
    _flag(
        flags.DEFINE_string,
        "out",
        None,
        "Where --mode=eval / --mode=score write (default: WORKDIR/eval, WORKDIR/score; for a "
        "detector archive, URL or name: ./NAME-eval, ./NAME-score).",
    )
    _flag(
        flags.DEFINE_string,
        "in_distribution",
        None,
        "The in-distribution test set of --mode=eval (a source spec), instead of the config's.",
    )


def config_dir() -> str:
    """The folder of the shipped configs (``configs/`` of a checkout, inside the wheel otherwise)."""
    return next(iter(semsad_jax.configs.__path__))


def config_names() -> list[str]:
    """Short names of the shipped configs (the files that define ``get_config``)."""
    names = []
    for entry in sorted(os.listdir(config_dir())):
        if entry.endswith(".py") and not entry.startswith("_"):
            with open(os.path.join(config_dir(), entry)) as f:
                if "def get_config(" in f.read():
                    names.append(entry[: -len(".py")])
    return names


def config_path(value: str) -> str:
    """``--config`` as ml_collections reads it: a path as given, or a short name's file.

    ``cifar100`` -> <configs>/cifar100.py; ``class_split:animals`` -> <configs>/class_split.py:animals.
    A value that is neither an existing file nor a known name is a one-line error listing the names.
    """
    path, sep, arg = value.partition(":")
    if os.path.exists(path) or path.endswith(".py") or os.sep in path:
        return value  # a path: ml_collections reports a missing file
    if path in config_names():
        return os.path.join(config_dir(), path + ".py") + sep + arg
    _fail(
        f"unknown --config {value!r}: not a file, and not a shipped config ({', '.join(config_names())}); "
        "pass a path (configs/my.py) or one of those names."
    )
    return value  # unreachable


def _fail(message: str) -> None:
    """Prints one ``error:`` line on stderr and exits with status 2 (a user-fixable problem)."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(2)


def _resolve_config_arg(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + config_path(arg[len("--config=") :])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = config_path(out[i + 1])
    return out


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing where a bad flag, override value or config file is one error line."""
    try:
        rest = FLAGS(_resolve_config_arg(argv))
        if FLAGS.config is not None:
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
    if FLAGS.config is None and FLAGS.mode in TRAINING_MODES:
        _fail(f"--mode={FLAGS.mode} needs --config (a file or one of {', '.join(config_names())}).")
    return rest


def _main(argv: list[str]) -> None:
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
            detector=FLAGS.detector,
            out=FLAGS.out,
            in_distribution=FLAGS.in_distribution,
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


def main(argv: list[str] | None = None) -> None:
    """The console script ``semsad-jax`` (also ``python -m semsad_jax`` and ``python main.py``)."""
    if "config" not in FLAGS:
        _define_flags()
    main_module = sys.modules.get("__main__")
    if main_module is not None and not getattr(main_module, "__doc__", None):
        main_module.__doc__ = __doc__  # what --help prints above the flags
    for name in _OWN_FLAGS:  # --help lists these, whichever script started the program
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
    args = sys.argv if argv is None else argv
    try:
        app.run(_main, argv=argv, flags_parser=parse_flags)
    except SystemExit as exit_:  # absl exits with 1 after printing the help it was asked for
        if exit_.code == 1 and set(args[1:]) & _HELP:
            sys.exit(0)
        raise
