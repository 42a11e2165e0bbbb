"""A tiny real TFDS builder for tests/test_tfds.py (importing this module registers it).

``semsad_tiny_shapes``: train (48) / test (16) RGB images, mostly 8x8 with every fifth one 10x6
(variable size), in three classes of clearly different pixels; ``examples(split)`` gives exactly
what the builder generates.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

NAME = "semsad_tiny_shapes"
CLASS_NAMES = ["dark", "bright", "striped"]
SIZES = {"train": 48, "test": 16}


def examples(split: str) -> list[tuple[np.ndarray, int]]:
    """(uint8 [H, W, 3] image, label) of every example of ``split``, in generation order."""
    rng = np.random.default_rng(SIZES[split])
    out = []
    for i in range(SIZES[split]):
        label = i % len(CLASS_NAMES)
        shape = (10, 6, 3) if i % 5 == 4 else (8, 8, 3)
        low, high = ((0, 80), (170, 256), (0, 256))[label]
        image = rng.integers(low, high, shape, dtype=np.uint8)
        if label == 2:
            image[::2] = 255  # bright stripes on noise
        out.append((image, label))
    return out


class SemsadTinyShapes(tfds.core.GeneratorBasedBuilder):
    """Three classes of small generated images (a real builder: prepared by TFDS's own code)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        # A plain DatasetInfo: dataset_info_from_configs() needs the builder inside a package.
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in SIZES}

    def _generate_examples(self, split):
        for i, (image, label) in enumerate(examples(split)):
            yield i, {"image": image, "label": label}
