"""Encoder quality monitor: weighted k-nearest-neighbour classification accuracy.

The usual SimCLR / InstDisc monitor: each test feature finds its ``k`` most cosine-similar training
features; neighbour j votes for its label with weight exp(sim_j / temperature); the class with the
largest summed vote (lowest class id on a tie) is the prediction. Labels are used only here, to
watch the label-free encoder, never to train it. :func:`pixel_knn_accuracy` runs the same
classifier on raw pixels: the floor a useful encoder must beat.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax.sharding import Mesh

from semsad_jax.errors import SemsadError
from semsad_jax.method.neighbours import top_k_cosine

__all__ = ["pixel_knn_accuracy", "weighted_knn_accuracy"]


def _labels(labels: Any, expected: int, name: str) -> np.ndarray:
    values = np.asarray(labels)
    if values.ndim != 1 or values.size != expected:
        raise SemsadError(
            f"{name} has shape {values.shape} but there are {expected} features; "
            "pass one integer label per feature."
        )
    if not np.issubdtype(values.dtype, np.integer) or (values.size and values.min() < 0):
        raise SemsadError(f"{name} must hold non-negative integer class ids; got {values.dtype}.")
    return values.astype(np.int64)


def weighted_knn_accuracy(
    train_features: Any,
    train_labels: Any,
    test_features: Any,
    test_labels: Any,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    mesh: Mesh | None = None,
    **search_kwargs: Any,
) -> float:
    """Accuracy in [0, 1] of the temperature-weighted cosine kNN classifier.

    Args:
      train_features: [N, D] float features (numpy or jax; normalised inside).
      train_labels: [N] int class ids.
      test_features: [Q, D] float features.
      test_labels: [Q] int class ids.
      k: neighbours per test feature, clipped to N.
      temperature: votes weigh exp(similarity / temperature).
      num_classes: defaults to 1 + the largest label seen.
      mesh: optional mesh with a "data" axis (see :func:`top_k_cosine`).
      search_kwargs: query_block, bank_chunk, normalized for :func:`top_k_cosine`.
    """
    num_train = np.shape(train_features)[0]
    num_test = np.shape(test_features)[0]
    train_labels = _labels(train_labels, num_train, "train_labels")
    test_labels = _labels(test_labels, num_test, "test_labels")
    if temperature <= 0:
        raise SemsadError(f"temperature={temperature} must be > 0; use e.g. 0.1.")
    if k < 1:
        raise SemsadError(f"k={k} must be >= 1; use e.g. 200.")
    seen = int(max(train_labels.max(initial=0), test_labels.max(initial=0))) + 1
    num_classes = seen if num_classes is None else int(num_classes)
    if num_classes < seen:
        raise SemsadError(f"num_classes={num_classes} but labels go up to {seen - 1}; raise it.")

    sims, idx = top_k_cosine(
        test_features, train_features, min(int(k), num_train), mesh=mesh, **search_kwargs
    )
    # Subtracting each row's best similarity leaves the argmax unchanged and avoids overflow.
    weights = np.exp((sims.astype(np.float64) - sims[:, :1]) / temperature)
    neighbour_labels = train_labels[idx]
    rows = np.arange(num_test)[:, None]
    votes = np.bincount(
        (rows * num_classes + neighbour_labels).ravel(),
        weights=weights.ravel(),
        minlength=num_test * num_classes,
    ).reshape(num_test, num_classes)
    predictions = np.argmax(votes, axis=1)
    return float(np.mean(predictions == test_labels))


def _flat_pixels(images: Any, name: str) -> np.ndarray:
    pixels = np.asarray(images)
    if pixels.ndim < 2 or pixels.shape[0] == 0:
        raise SemsadError(f"{name} has shape {pixels.shape}; pass a non-empty [n, H, W, C] batch.")
    return pixels.reshape(pixels.shape[0], -1).astype(np.float32) / 255.0


def pixel_knn_accuracy(
    train_images_uint8: Any,
    train_labels: Any,
    test_images_uint8: Any,
    test_labels: Any,
    **kwargs: Any,
) -> float:
    """The weighted kNN accuracy on raw pixels: the floor an encoder must beat.

    Images are uint8 [n, H, W, C] (any trailing shape), flattened, scaled to [0, 1], centred by the
    mean training image, then searched by cosine. ``kwargs`` go to :func:`weighted_knn_accuracy`.
    """
    train_pixels = _flat_pixels(train_images_uint8, "train_images_uint8")
    test_pixels = _flat_pixels(test_images_uint8, "test_images_uint8")
    if train_pixels.shape[1] != test_pixels.shape[1]:
        raise SemsadError(
            f"train images have {train_pixels.shape[1]} values each, test images "
            f"{test_pixels.shape[1]}; resize both sets to the same shape."
        )
    mean_image = train_pixels.mean(axis=0, keepdims=True)
    return weighted_knn_accuracy(
        train_pixels - mean_image, train_labels, test_pixels - mean_image, test_labels, **kwargs
    )
