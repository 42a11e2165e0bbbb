"""Image data: spec strings -> uint8 RGB :class:`ImageSet` (sources, files, archives, cache, sets).

``from semsad_jax.data import load_images, images_from_array, ImageSet`` is the public entry point.
"""

from semsad_jax.data.arrays import ImageSet, images_from_array
from semsad_jax.data.sets import DataSets, contaminate
from semsad_jax.data.sources import load_images
from semsad_jax.data.specs import Spec, parse_spec

__all__ = [
    "DataSets",
    "ImageSet",
    "Spec",
    "contaminate",
    "images_from_array",
    "load_images",
    "parse_spec",
]
