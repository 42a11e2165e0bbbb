"""The feature bank: h features, semantic neighbourhoods and images of the whole training set.

Built once after the encoder (by ``--mode=discriminator``) and reused by the discriminator's pair
sampler, by evaluation (top-1 training neighbour of each test image) and by a detector restored from
the workdir alone, without the training data. Layout::

    WORKDIR/bank/arrays/   Orbax (StandardCheckpointer) pytree:
                             features   float32 [N, D]   L2-normalised h (inference mode, un-augmented)
                             neighbours int32 [N, k]     S(x): the k most cosine-similar OTHER images
                             images     uint8 [N, H, W, 3]
                             labels     int32 [N]        class indices, -1 when unknown
    WORKDIR/bank/bank.json N, D, k, image size, train spec, class names, encoder identity, digests of
                           the encoder parameters and of the images, build times. Written last: a bank
                           without it is incomplete and rebuilt.

A bank is stale (and rebuilt) when the encoder parameters, the training images, k or the image size
differ from what bank.json records.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from semsad_jax.data.arrays import ImageSet, array_digest
from semsad_jax.errors import SemsadError
from semsad_jax.method.features import compute_features
from semsad_jax.method.neighbours import label_neighbourhoods, pooled_neighbourhoods
from semsad_jax.parallel.launch import sync
from semsad_jax.parallel.mesh import make_mesh, to_host
from semsad_jax.workdir.layout import Workdir, as_workdir
from semsad_jax.workdir.space import check_free, free_bytes, reporting_disk_full, tree_bytes

log = logging.getLogger(__name__)
BANK_FORMAT = 1
_DTYPES = {"features": "float32", "neighbours": "int32", "images": "uint8", "labels": "int32"}


@dataclasses.dataclass
class Bank:
    """A loaded feature bank (numpy arrays on the host).

    Attributes:
      features: float32 [N, D], rows of unit L2 norm.
      neighbours: int32 [N, k]; row i holds the indices of S(x_i), never i itself.
      images: uint8 [N, H, W, 3], the training images in bank order.
      labels: int32 [N], class indices or -1 when the training set has no labels.
      meta: the contents of ``bank.json``.
    """

    features: np.ndarray
    neighbours: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    meta: dict

    def __len__(self) -> int:
        return int(self.features.shape[0])


def tree_digest(tree: Any) -> str:
    """:func:`~semsad_jax.data.arrays.array_digest` of every leaf of ``tree`` (host arrays, or
    jax arrays fetched with :func:`to_host`)."""
    return array_digest(jax.tree.leaves(to_host(tree)))


NEIGHBOURHOODS = ("encoder", "labels")


def _expected_meta(section: Any, train: ImageSet, encoder_digest: str, seed: int) -> dict:
    """What a fresh bank for this discriminator section, data and encoder must record."""
    if section.neighbourhood not in NEIGHBOURHOODS:
        raise SemsadError(
            f"unknown discriminator.neighbourhood {section.neighbourhood!r}; use 'encoder' "
            "(SemSAD) or 'labels' (a diagnostic that uses labels)."
        )
    return {
        "format": BANK_FORMAT,
        "num_images": len(train),
        "neighbours": int(section.neighbours),
        "neighbour_pool": int(section.neighbour_pool),
        "neighbourhood": str(section.neighbourhood),
        "label_free": section.neighbourhood == "encoder",
        "seed": int(seed),
        "image_size": int(train.images.shape[1]),
        "encoder_digest": encoder_digest,
        "images_digest": train.digest,
    }


def _stale_reason(meta: dict | None, expected: dict) -> str | None:
    if meta is None:
        return "no bank yet"
    for key, value in expected.items():
        if meta.get(key) != value:
            return f"{key} changed ({meta.get(key)!r} -> {value!r})"
    return None


def build_bank(
    workdir: str | Workdir,
    section: Any,
    train: ImageSet,
    encoder: tuple,
    *,
    dtype: Any = "float32",
    seed: int = 0,
    encoder_identity: dict | None = None,
    mesh: Mesh | None = None,
) -> Bank:
    """Loads the bank of ``workdir`` if it is fresh for this encoder and data, else builds and saves it.

    Features: :func:`method.features.compute_features` of ``train.images`` with the finished
    encoder (inference mode, batches of ``section.feature_batch_size`` sharded over ``mesh``).
    Neighbourhoods: the ``k = section.neighbours`` nearest by h among ``section.neighbour_pool``
    random images (:func:`method.neighbours.pooled_neighbourhoods`, drawn with ``seed``), or with
    ``section.neighbourhood="labels"`` k random images of the same class (a diagnostic).

    Args:
      section: the ``discriminator`` config section.
      encoder: (graphdef, params, batch_stats) of the finished encoder.
      encoder_identity: recorded in bank.json for provenance.
    """
    wd = as_workdir(workdir)
    mesh = mesh or make_mesh()
    k = int(section.neighbours)
    if not 1 <= k < len(train):
        raise SemsadError(
            f"discriminator.neighbours={k} needs 1 <= k < {len(train)} (the training images); lower it."
        )
    graphdef, params, stats = encoder
    expected = _expected_meta(section, train, tree_digest((params, stats)), seed)
    reason = _stale_reason(wd.read(wd.bank_json), expected)
    if reason is None:
        log.info("reusing the feature bank in %s", wd.bank_dir)
        return load_bank(wd)
    log.info("building the feature bank of %d training images (%s)", len(train), reason)

    t0 = time.time()
    features = compute_features(
        graphdef,
        params,
        stats,
        train.images,
        mesh=mesh,
        batch_size=int(section.feature_batch_size),
        dtype=dtype,
    )
    t1 = time.time()
    if section.neighbourhood == "labels":
        neighbours = label_neighbourhoods(train.labels if train.labels is not None else [], k, seed)
    else:
        pool = int(section.neighbour_pool)
        neighbours = pooled_neighbourhoods(features, k, pool, seed, normalized=True, mesh=mesh)
    t2 = time.time()
    labels = train.labels if train.labels is not None else np.full(len(train), -1)
    bank = Bank(
        features=features.astype(np.float32),
        neighbours=neighbours.astype(np.int32),
        images=np.asarray(train.images, np.uint8),
        labels=np.asarray(labels, np.int32),
        meta={
            **expected,
            "feature_dim": int(features.shape[1]),
            "image_shape": list(train.images.shape[1:]),
            "train_spec": train.spec,
            "class_names": train.class_names,
            "encoder_identity": encoder_identity,
            "features_seconds": round(t1 - t0, 3),
            "neighbours_seconds": round(t2 - t1, 3),
        },
    )
    save_bank(wd, bank)
    bank.meta["build_seconds"] = round(time.time() - t0, 3)
    wd.write(wd.bank_json, bank.meta)
    log.info(
        "feature bank: %d x %d features in %.1f s, %d-neighbourhoods in %.1f s; %.1f s in all",
        len(bank),
        bank.features.shape[1],
        t1 - t0,
        k,
        t2 - t1,
        bank.meta["build_seconds"],
    )
    return bank


def _arrays(bank: Bank) -> dict[str, np.ndarray]:
    return {name: getattr(bank, name) for name in _DTYPES}


def save_bank(workdir: str | Workdir, bank: Bank) -> None:
    """Writes the arrays of ``bank`` with Orbax (bank.json is written by the caller, last)."""
    wd = as_workdir(workdir)
    os.makedirs(wd.bank_dir, exist_ok=True)
    arrays = _arrays(bank)
    needed = tree_bytes(arrays)
    what = f"the feature bank of {len(bank)} images"
    # the old arrays (replaced below) give their space back
    if free_bytes(wd.bank_dir) + _dir_bytes(wd.bank_arrays) < needed:
        check_free(wd.bank_dir, needed, what)
    if jax.process_index() == 0 and os.path.exists(wd.bank_json):
        os.remove(wd.bank_json)  # the arrays are about to change: the old description is void
    sync(f"remove {wd.bank_json}")
    wd.forget(wd.bank_json)
    # a bank without bank.json is incomplete: a rerun rebuilds it from the finished encoder
    with reporting_disk_full(wd.bank_dir, needed, what, cleanup=[wd.bank_arrays]):
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(wd.bank_arrays, arrays, force=True)
        checkpointer.wait_until_finished()
        checkpointer.close()


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def load_bank(workdir: str | Workdir) -> Bank:
    """The bank saved in ``workdir`` (needs only the workdir, not the training data).

    Raises SemsadError when there is no complete bank or it cannot be read.
    """
    wd = as_workdir(workdir)
    meta = wd.read(wd.bank_json)
    if meta is None:
        raise SemsadError(
            f"no feature bank in {wd.bank_dir}; run --mode=discriminator with this --workdir first."
        )
    n, dim, k = int(meta["num_images"]), int(meta["feature_dim"]), int(meta["neighbours"])
    shapes = {
        "features": (n, dim),
        "neighbours": (n, k),
        "images": (n, *meta["image_shape"]),
        "labels": (n,),
    }
    abstract = {
        name: jax.ShapeDtypeStruct(shapes[name], np.dtype(dtype)) for name, dtype in _DTYPES.items()
    }
    checkpointer = ocp.StandardCheckpointer()
    try:
        arrays = checkpointer.restore(wd.bank_arrays, abstract)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise SemsadError(
            f"the feature bank in {wd.bank_dir} is unreadable ({first}); rerun --mode=discriminator."
        ) from None
    finally:
        checkpointer.close()
    arrays = {name: np.asarray(arrays[name], _DTYPES[name]) for name in _DTYPES}
    return Bank(**arrays, meta=meta)
