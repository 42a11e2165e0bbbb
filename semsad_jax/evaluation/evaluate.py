"""``--mode=eval``: SemSAD scores, the baselines, metrics, tables and plots (``--mode=score`` is
:mod:`semsad_jax.evaluation.score`).

For the in-distribution test set (``eval.in_distribution`` or ``data.test``) and every OOD set
(``eval.ood`` plus repeatable ``--ood NAME=SPEC``), each image x gets

* ``semsad``: s(r, x), r = x's top-1 cosine neighbour among the training features (reference =
  training neighbour, partner = test image), see :class:`semsad_jax.evaluation.detector.Detector`;
* ``knn``: cosine similarity to the ``eval.knn_k``-th nearest training feature of the same encoder
  (penultimate features by default, ``eval.baseline_features``);
* ``mahalanobis``: minus the Mahalanobis distance to the training Gaussian(s) (SSD without labels),
  on the same features;
* ``pixels_knn``: cosine similarity of the raw pixels to the ``eval.knn_k``-th nearest training image
  (the floor: no learning; ``eval.pixels_centre`` subtracts the mean training image first);
* ``rotation`` (with ``rotation.enabled``): the rotation network's mean log-probability of the true
  transformation over the image's transformed copies;
* ``combined`` (``eval.combined``): the lowest training-bank percentile of its components.

Higher = more in-distribution; in-distribution is the POSITIVE class of every metric. Outputs in
``WORKDIR/eval/``: results.json (metrics as fractions in [0, 1], per-detector thresholds keeping
``eval.tpr`` of the in-distribution test images, for OOD sets of several labelled classes the AUROC of
each class alone (``auroc_by_class``), bn_mode, config, versions), scores.npz (raw scores
``DETECTOR/SET`` and neighbour indices ``nn/SET``), results.txt (the printed table) and, with
``eval.plots``, hist_semsad.png and roc.png.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import re
from typing import Any

import jax
import numpy as np

from semsad_jax._version import __version__
from semsad_jax.data.sets import DataSets
from semsad_jax.data.specs import parse_spec
from semsad_jax.errors import SemsadError
from semsad_jax.evaluation import plots
from semsad_jax.evaluation.detector import DETECTORS, Detector, bn_mode  # noqa: F401 (re-exported)
from semsad_jax.evaluation.report import IN_NAME, METRICS, results_table, scores_key
from semsad_jax.method.metrics import auroc_by_class, ood_metrics, threshold_at_tpr
from semsad_jax.method.pairs import pair_settings, sample_pairs
from semsad_jax.workdir import layout
from semsad_jax.workdir.layout import Workdir, as_workdir, write_file, write_json
from semsad_jax.workdir.space import check_free

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_sample_pairs = jax.jit(sample_pairs, static_argnames=("cfg",))
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scikit-learn")


def parse_ood(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["NAME=SPEC", ...]`` (the repeatable ``--ood`` flag) -> {NAME: SPEC}, in order.

    NAME: letters, digits, ``_ . -`` and not ``in_distribution``; SPEC: a data spec (everything after
    the first ``=``, so queries like ``?classes=1,2`` are kept). SemsadError for a malformed item.
    """
    out: dict[str, str] = {}
    for item in items:
        name, sep, spec = str(item).partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not _NAME.match(name) or not spec:
            raise SemsadError(
                f"--ood {item!r} is malformed; write NAME=SPEC, e.g. --ood svhn=tfds:svhn_cropped/test."
            )
        if name == IN_NAME:
            raise SemsadError(f"--ood name {IN_NAME!r} is reserved; choose another name.")
        if name in out:
            raise SemsadError(f"--ood {name} is given twice; give each OOD set a distinct name.")
        parse_spec(spec)
        out[name] = spec
    return out


def ood_specs(config: Any, extra_ood: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """OOD sets of ``eval.ood`` (name -> spec) updated with ``--ood NAME=SPEC`` items."""
    specs = {str(k): str(v) for k, v in dict(config.eval.ood).items()}
    for name, spec in parse_ood(extra_ood).items():
        if name in specs:
            log.info("--ood %s=%s replaces eval.ood.%s=%s", name, spec, name, specs[name])
        specs[name] = spec
    if IN_NAME in specs:
        raise SemsadError(f"eval.ood.{IN_NAME} is a reserved name; rename that OOD set.")
    return specs


def versions() -> dict[str, str]:
    """Versions of Python, semsad_jax and the numeric packages that produced a result."""
    out = {"python": platform.python_version(), "semsad_jax": __version__}
    for package in _PACKAGES:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def _config_dict(config: Any) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _metrics(scores_in: np.ndarray, scores_out: np.ndarray, tpr: float) -> dict:
    m = ood_metrics(scores_in, scores_out, tpr)
    return {**{k: m[k] for k in METRICS}, "num_ood": m["num_out"]}


def in_distribution_spec(config: Any) -> str:
    """The in-distribution test set: ``eval.in_distribution``, else ``data.test``."""
    spec = config.eval.in_distribution or config.data.test
    if not spec:
        raise SemsadError(
            "no in-distribution test set; set --config.eval.in_distribution=SPEC or data.test."
        )
    return spec


def evaluate(
    config: Any,
    workdir: str | Workdir,
    extra_ood: list[str] | tuple[str, ...] = (),
    *,
    mesh: Any = None,
    sets: DataSets | None = None,
    detector: Detector | None = None,
    out_dir: str | None = None,
    in_spec: str | None = None,
) -> dict:
    """Scores the in-distribution test set and every OOD set; writes WORKDIR/eval/ (see module doc).

    Args:
      config: the run's config (reads ``eval``, ``data.test``, ``discriminator.norm``, ...).
      workdir: a workdir with a finished encoder and discriminator (and the bank).
      extra_ood: ``--ood NAME=SPEC`` items, added to ``eval.ood``.
      sets: the run's loaded data (a set decoded for training is reused), or None.
      detector: the restored detector of ``workdir``, or None to restore it here.
      out_dir: where the outputs go (default WORKDIR/eval).
      in_spec: the in-distribution set (default ``eval.in_distribution``, else ``data.test``).
    Returns:
      the results dict written to results.json.
    """
    wd = as_workdir(workdir)
    wd.check_trained(layout.trained_stages(config))
    oods = ood_specs(config, extra_ood)
    in_spec = in_spec or in_distribution_spec(config)
    parse_spec(in_spec)
    detector = detector or Detector.from_workdir(config, wd, mesh=mesh)
    return evaluate_detector(detector, in_spec, oods, out_dir or wd.eval_dir, sets=sets)


def evaluate_detector(
    detector: Detector,
    in_spec: str,
    oods: dict[str, str],
    out_dir: str,
    *,
    sets: DataSets | None = None,
) -> dict:
    """Scores ``in_spec`` and the ``oods`` sets (name -> spec) with ``detector``; writes ``out_dir``.

    ``sets`` loads the images (default: a new DataSets of ``detector.config.data``).
    """
    config = detector.config
    sets = sets or DataSets(config.data, int(config.seed))
    if not oods:
        log.warning("no OOD sets (eval.ood or --ood NAME=SPEC): only thresholds are computed")
    v = config.eval
    tpr = float(v.tpr)
    floors = detector.floors
    names = detector.names
    scored, classes = {}, {}
    for name, spec in [(IN_NAME, in_spec), *oods.items()]:
        log.info("scoring %s: %s", name, spec)
        image_set = sets.load(spec)
        scored[name] = detector.scores(image_set.images)
        labels = image_set.labels
        if name != IN_NAME and labels is not None and len(np.unique(labels)) > 1:
            classes[name] = (labels, image_set.class_names)
    results = {
        "in_distribution": in_spec,
        "num_in": len(scored[IN_NAME]["semsad"]),
        "bn_mode": bn_mode(config),
        "positive_class": "in-distribution (higher score = more in-distribution)",
        "tpr": tpr,
        "ood": oods,
        "detectors": {
            d: {n: _metrics(scored[IN_NAME][d], scored[n][d], tpr) for n in oods} for d in names
        },
        "threshold_95": {d: threshold_at_tpr(scored[IN_NAME][d], tpr) for d in names},
        # per OOD set of several labelled classes: each class's AUROC alone (a diagnostic)
        "auroc_by_class": {
            d: {n: auroc_by_class(scored[IN_NAME][d], scored[n][d], *classes[n]) for n in classes}
            for d in names
        },
        "baseline_features": floors.features,
        "pixels_centre": floors.pixels.mean is not None,
        # False when the discriminator learned from label neighbourhoods (a diagnostic, not SemSAD)
        "label_free": bool(detector.bank.meta.get("label_free", True)),
        # per stage: trained epochs and steps, the restored checkpoint step, identity digest
        "stages": detector.provenance,
        "config": _config_dict(config),
        "versions": versions(),
    }
    plotted = write_plots(detector, scored, results, out_dir) if v.plots else []
    if jax.process_index() == 0:  # every process computed the same; one writes
        arrays = {scores_key(d, n): s[d] for n, s in scored.items() for d in names}
        arrays.update({scores_key("nn", n): s["nn"] for n, s in scored.items()})
        needed = sum(a.nbytes for a in arrays.values()) + (1 << 20)
        check_free(out_dir, needed, "the eval outputs (scores.npz, results.json, results.txt)")
        write_file(
            os.path.join(out_dir, layout.SCORES_NPZ), lambda f: np.savez(f, **arrays), needed
        )
        write_json(os.path.join(out_dir, layout.RESULTS_JSON), results)
        table = results_table(results)
        text = (table + "\n").encode()
        write_file(os.path.join(out_dir, layout.RESULTS_TXT), lambda f: f.write(text), len(text))
        print(table)
        for path in plotted:
            log.info("wrote %s", path)
    return results


def training_pair_scores(detector: Detector, count: int, seed: int) -> dict[str, np.ndarray]:
    """Scores (inference mode) of ``count`` positive and negative training pairs from the bank.

    The pairs are drawn as in training (:func:`semsad_jax.pairs.sample_pairs`, the config's pair
    settings, key ``seed``) from ``count`` distinct bank images; views are rounded to uint8.
    """
    bank = detector.bank
    count = min(int(count), len(bank.images))
    if count < 2:
        return {}
    key = jax.random.key(seed)
    batch_idx = jax.random.choice(jax.random.fold_in(key, 0), len(bank.images), (count,), False)
    pairs = _sample_pairs(
        jax.random.fold_in(key, 1),
        bank.images,
        bank.neighbours,
        batch_idx,
        cfg=pair_settings(detector.config.discriminator),
    )
    as_u8 = lambda x: np.rint(np.clip(np.asarray(x), 0.0, 1.0) * 255.0).astype(np.uint8)
    return {
        "train positive pairs": detector.pair_scores(
            as_u8(pairs["ref_pos"]), as_u8(pairs["partner_pos"])
        ),
        "train negative pairs": detector.pair_scores(
            as_u8(pairs["ref_neg"]), as_u8(pairs["partner_neg"])
        ),
    }


def write_plots(detector: Detector, scored: dict, results: dict, out_dir: str) -> list[str]:
    """hist_semsad.png (Figure 4 style) and roc.png in ``out_dir``; returns their paths."""
    mode = results["bn_mode"]
    count = int(detector.config.eval.plot_pairs)
    groups = training_pair_scores(detector, count, int(detector.config.seed))
    if jax.process_index() != 0:
        return []
    groups["in-distribution test"] = scored[IN_NAME]["semsad"]
    groups.update({f"OOD: {n}": scored[n]["semsad"] for n in results["ood"]})
    paths = [
        plots.score_histograms(
            os.path.join(out_dir, layout.HIST_PNG),
            groups,
            title=f"SemSAD scores [bn_mode: {mode}]",
            threshold=results["threshold_95"]["semsad"],
        )
    ]
    if results["ood"]:
        paths.append(
            plots.roc_curves(
                os.path.join(out_dir, layout.ROC_PNG),
                {d: scored[IN_NAME][d] for d in detector.names},
                {n: {d: scored[n][d] for d in detector.names} for n in results["ood"]},
                title=f"ROC, in-distribution positive [bn_mode: {mode}]",
            )
        )
    return paths
