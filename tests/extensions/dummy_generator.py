"""A synthetic-anomaly generator: an inverted square."""

import numpy as np

from anomaly_attn.data.synthetic import register_generator


@register_generator("dummy_inverted_square")
def inverted_square(image: np.ndarray, rng: np.random.Generator, sources: object, *, side: int = 8):
    height, width = image.shape[:2]
    top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + side, left : left + side] = True
    anomalous = image.copy()
    anomalous[mask] = 1.0 - anomalous[mask]
    return anomalous, mask
