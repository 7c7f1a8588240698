"""A classical detector: distance to the mean training image."""

import numpy as np

from anomaly_attn.classical.detectors import ClassicalDetector, register_detector


class MeanImage:
    def fit(self, features: np.ndarray) -> "MeanImage":
        self.mean_ = features.mean(axis=0)
        return self


def _distance(estimator: MeanImage, features: np.ndarray) -> np.ndarray:
    return np.linalg.norm(features - estimator.mean_, axis=1)


@register_detector("dummy_mean_distance")
def make_mean_distance(n_train: int, seed: int) -> ClassicalDetector:
    return ClassicalDetector("dummy_mean_distance", MeanImage(), _distance)
