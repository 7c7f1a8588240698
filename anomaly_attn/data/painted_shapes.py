"""Painted shapes: the anomalies of corrupted Fashion-MNIST (``fmnist.py``), also drawn by the ``shapes``
synthetic validation anomalies.

One rectangle, rotated ellipse or line of 3-8 px (extents given for larger images), dilated by 1 px, and
painted white or with a random gray level that differs visibly from the pixels it covers.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation
from skimage.draw import ellipse, line

SHAPES = ("rectangle", "ellipse", "line")
MIN_SHAPE_PX, MAX_SHAPE_PX = 3, 8
"""Extent of a shape before its 1-px dilation (rectangle sides, ellipse diameters, line length)."""
MIN_GRAY_CONTRAST = 64
"""A gray shape's level differs from the pixels it covers by at least this much on average (0-255)."""


def draw_shape(
    rng: np.random.Generator,
    size: int = 28,
    min_extent: int = MIN_SHAPE_PX,
    max_extent: int = MAX_SHAPE_PX,
) -> tuple[np.ndarray, str]:
    """A boolean ``size×size`` mask of one random shape, dilated by 1 px, and the shape's kind.

    Rectangle (sides 3-8 px), rotated ellipse (diameters 3-8 px) or 1-px line (3-8 px long, any angle),
    placed so that the undilated shape lies inside the image. ``min_extent``/``max_extent`` replace the
    3-8 px for larger images (synthetic validation anomalies scale them with the image side).
    """
    if not 1 <= min_extent <= max_extent <= size:
        raise ValueError(
            f"draw_shape needs 1 <= min_extent ({min_extent}) <= max_extent ({max_extent}) <= size ({size})"
        )
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    extents = rng.integers(min_extent, max_extent + 1, size=2)
    mask = np.zeros((size, size), dtype=bool)
    if kind == "rectangle":
        height, width = (int(extent) for extent in extents)
        top, left = int(rng.integers(size - height + 1)), int(rng.integers(size - width + 1))
        mask[top : top + height, left : left + width] = True
    elif kind == "ellipse":
        radii = extents / 2.0
        reach = float(radii.max())  # any rotation stays within the larger radius of the centre
        centre_row, centre_col = rng.uniform(reach - 0.5, size - reach - 0.5, size=2)
        rows, cols = ellipse(
            centre_row, centre_col, radii[0], radii[1], shape=mask.shape, rotation=rng.uniform(-np.pi, np.pi)
        )
        mask[rows, cols] = True
    else:
        length = int(extents[0]) - 1
        angle = rng.uniform(0.0, np.pi)
        delta_row, delta_col = round(length * np.sin(angle)), round(length * np.cos(angle))
        start_row = int(rng.integers(size - delta_row))
        start_col = int(rng.integers(max(0, -delta_col), size - max(0, delta_col)))
        rows, cols = line(start_row, start_col, start_row + delta_row, start_col + delta_col)
        mask[rows, cols] = True
    return binary_dilation(mask, structure=np.ones((3, 3), dtype=bool)), kind


def gray_level(rng: np.random.Generator, covered_pixels: np.ndarray) -> int:
    """A random level in 0-255 whose mean absolute difference from ``covered_pixels`` is at least
    ``MIN_GRAY_CONTRAST`` (rejection sampling; 0 or 255 always qualifies, so it terminates quickly)."""
    covered = covered_pixels.astype(np.float64)
    while True:
        level = int(rng.integers(256))
        if np.abs(covered - level).mean() >= MIN_GRAY_CONTRAST:
            return level
