"""Classical image-level anomaly detectors (k-NN, one-class SVM, isolation forest, LOF, k-means).

They answer "how far does a model-free detector get on this category?" next to the reconstruction
models. Each is FIT ON THE TRAINING IMAGES ONLY (the research code fit 1-NN and k-means on the test
set) and scores test images with a continuous anomaly score, higher = more anomalous (never a hard
label, which would make AUROC meaningless).

Features are flattened, downsampled pixels (``pixels``) or globally pooled feature maps of a timm
backbone (``backbone``; random weights unless ``pretrained`` and the weights are cached).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors
from sklearn.svm import OneClassSVM

from anomaly_attn.common.registries import Registry

FEATURES = ("pixels", "backbone")

# name -> factory(n_train, seed, **params) -> ClassicalDetector, filled by @register_detector.
DETECTORS: Registry[Callable[..., ClassicalDetector]] = Registry("classical detector")


def register_detector(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make ``factory(n_train, seed, **params) -> ClassicalDetector`` the classical detector
    ``name`` (``detector=name`` with a conf/detector/NAME.yaml whose ``name`` is ``name``)."""

    return DETECTORS.register(name)


def list_detectors() -> list[str]:
    """Names of the registered classical detectors, sorted."""
    return DETECTORS.names()


@dataclass
class ClassicalDetector:
    """A fitted-on-train estimator and the function that turns it into anomaly scores.

    ``score(estimator, features)`` returns one float per row, higher = more anomalous.
    """

    name: str
    estimator: Any
    score_fn: Callable[[Any, np.ndarray], np.ndarray]
    fitted: bool = False

    def fit(self, train_features: np.ndarray) -> ClassicalDetector:
        """Fit on the features of normal TRAINING images only."""
        self.estimator.fit(train_features)
        self.fitted = True
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        """Continuous anomaly scores (higher = more anomalous) of ``features``."""
        if not self.fitted:
            raise RuntimeError(f"classical detector {self.name!r}: call fit(train_features) before score()")
        return np.asarray(self.score_fn(self.estimator, features), dtype=np.float64)


def _knn_score(estimator: NearestNeighbors, features: np.ndarray) -> np.ndarray:
    distances, _ = estimator.kneighbors(features)
    return distances.mean(axis=1)


def _kmeans_score(estimator: KMeans, features: np.ndarray) -> np.ndarray:
    return estimator.transform(features).min(axis=1)


def _negated_decision(estimator: OneClassSVM, features: np.ndarray) -> np.ndarray:
    return -estimator.decision_function(features)


def _negated_score_samples(
    estimator: IsolationForest | LocalOutlierFactor, features: np.ndarray
) -> np.ndarray:
    return -estimator.score_samples(features)


@register_detector("knn")
def _make_knn(n_train: int, seed: int, n_neighbors: int = 1) -> ClassicalDetector:
    """Mean distance to the ``n_neighbors`` nearest training images (1: the research code's 1-NN)."""
    return ClassicalDetector("knn", NearestNeighbors(n_neighbors=min(n_neighbors, n_train)), _knn_score)


@register_detector("ocsvm")
def _make_ocsvm(n_train: int, seed: int, nu: float = 0.1, gamma: str | float = "scale") -> ClassicalDetector:
    """RBF one-class SVM; score = −decision_function (signed distance to the boundary)."""
    return ClassicalDetector("ocsvm", OneClassSVM(kernel="rbf", nu=nu, gamma=gamma), _negated_decision)


@register_detector("iforest")
def _make_iforest(n_train: int, seed: int, n_estimators: int = 200) -> ClassicalDetector:
    """Isolation forest; score = −score_samples (shorter average path = more anomalous)."""
    estimator = IsolationForest(n_estimators=n_estimators, random_state=seed)
    return ClassicalDetector("iforest", estimator, _negated_score_samples)


@register_detector("lof")
def _make_lof(n_train: int, seed: int, n_neighbors: int = 20) -> ClassicalDetector:
    """Local outlier factor in novelty mode (fit on train, score new images); score = −score_samples."""
    estimator = LocalOutlierFactor(n_neighbors=min(n_neighbors, n_train - 1), novelty=True)
    return ClassicalDetector("lof", estimator, _negated_score_samples)


@register_detector("kmeans")
def _make_kmeans(n_train: int, seed: int, n_clusters: int = 8) -> ClassicalDetector:
    """k-means fit on train; score = distance to the nearest centroid."""
    estimator = KMeans(n_clusters=min(n_clusters, n_train), n_init=10, random_state=seed)
    return ClassicalDetector("kmeans", estimator, _kmeans_score)


def create_detector(name: str, n_train: int, seed: int = 0, **params: Any) -> ClassicalDetector:
    """The detector ``name`` (a key of ``DETECTORS``) with its ``params`` (e.g. ``n_neighbors``).

    ``n_train`` caps neighbour and cluster counts so tiny training sets still work.
    """
    factory = DETECTORS.get(name)
    if n_train < 2:
        raise ValueError(f"classical detector {name!r} needs at least 2 training images, got {n_train}")
    try:
        return factory(n_train, seed, **params)
    except TypeError as error:
        raise TypeError(f"classical detector {name!r}: bad parameter in {params}: {error}") from error


def pixel_features(images: torch.Tensor, pixel_size: int) -> np.ndarray:
    """``N×C×H×W`` images in [0, 1] → ``N×(C·pixel_size²)``: area-downsampled, flattened pixels."""
    small = F.interpolate(images, size=(pixel_size, pixel_size), mode="area")
    return small.flatten(1).numpy().astype(np.float64)


class BackboneFeatures:
    """Globally average-pooled feature maps of every stage of a timm backbone, concatenated."""

    def __init__(self, backbone: str, in_channels: int, pretrained: bool = False) -> None:
        import timm

        self.model = timm.create_model(
            backbone, features_only=True, pretrained=pretrained, in_chans=in_channels
        )
        self.model.eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        rows = []
        for start in range(0, len(images), batch_size):
            stages = self.model(images[start : start + batch_size])
            rows.append(torch.cat([stage.mean(dim=(2, 3)) for stage in stages], dim=1))
        return torch.cat(rows).numpy().astype(np.float64)


def make_featurizer(
    features: str,
    in_channels: int,
    pixel_size: int = 32,
    backbone: str = "resnet18",
    pretrained: bool = False,
) -> Callable[[torch.Tensor], np.ndarray]:
    """The function ``images -> features`` that ``features`` (``pixels`` or ``backbone``) names."""
    if features == "pixels":
        return lambda images: pixel_features(images, pixel_size)
    if features == "backbone":
        return BackboneFeatures(backbone, in_channels, pretrained)
    raise ValueError(f"Unknown detector.features {features!r}; valid: {', '.join(FEATURES)}")
