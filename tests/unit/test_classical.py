"""Classical image-level detectors: fit on training images only, continuous scores, the CLI's run dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from sklearn.cluster import KMeans
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors
from sklearn.svm import OneClassSVM

from anomaly_attn.classical.detectors import DETECTORS, create_detector, make_featurizer, pixel_features
from anomaly_attn.cli.classical import renamed_argument
from anomaly_attn.cli.sweeps import CONFIG_DIR
from anomaly_attn.jobs.classical import classical_job
from anomaly_attn.metrics import image_auroc

ESTIMATOR_CLASSES = {
    "knn": NearestNeighbors,
    "ocsvm": OneClassSVM,
    "iforest": IsolationForest,
    "lof": LocalOutlierFactor,
    "kmeans": KMeans,
}


def gaussian_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train: 60 points of N(0, I) in 8-d. Test: 20 more normal points and 20 points shifted by 6σ."""
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(60, 8))
    test = np.concatenate([rng.normal(size=(20, 8)), rng.normal(size=(20, 8)) + 6.0])
    labels = np.array([0] * 20 + [1] * 20)
    return train, test, labels


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_detectors_separate_far_outliers_with_continuous_scores(name: str) -> None:
    train, test, labels = gaussian_problem()
    scores = create_detector(name, n_train=len(train), seed=0).fit(train).score(test)
    assert scores.shape == (40,)
    # A continuous score per image, not a hard label (far outliers may tie: an isolation forest
    # isolates all of them at the same depth).
    assert len(np.unique(scores[:20])) == 20
    assert image_auroc(scores, labels) == 1.0


def test_kmeans_score_is_the_distance_to_the_nearest_training_centroid() -> None:
    train, test, _ = gaussian_problem()
    detector = create_detector("kmeans", n_train=len(train), seed=0, n_clusters=3).fit(train)
    centroids = detector.estimator.cluster_centers_
    assert centroids.shape == (3, 8)
    by_hand = np.sqrt(((test[:, None, :] - centroids[None]) ** 2).sum(-1)).min(axis=1)
    np.testing.assert_allclose(detector.score(test), by_hand, rtol=1e-10)


def test_knn_score_is_the_mean_distance_to_the_k_nearest_training_points() -> None:
    train, test, _ = gaussian_problem()
    detector = create_detector("knn", n_train=len(train), n_neighbors=3).fit(train)
    distances = np.sqrt(((test[:, None, :] - train[None]) ** 2).sum(-1))
    np.testing.assert_allclose(detector.score(test), np.sort(distances, axis=1)[:, :3].mean(axis=1))


def test_bad_names_and_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="Valid: 'iforest', 'kmeans', 'knn', 'lof', 'ocsvm'"):
        create_detector("svdd", n_train=10)
    with pytest.raises(TypeError, match="knn"):
        create_detector("knn", n_train=10, n_clusters=3)
    with pytest.raises(RuntimeError, match="fit"):
        create_detector("knn", n_train=10).score(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="pixels, backbone"):
        make_featurizer("hog", in_channels=1)


def test_pixel_features_are_area_downsampled_flattened_images() -> None:
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    features = pixel_features(images, pixel_size=2)
    assert features.shape == (2, 4)
    np.testing.assert_allclose(features[0], [2.5, 4.5, 10.5, 12.5])  # means of the 2×2 blocks


def test_backbone_features_have_one_pooled_vector_per_image() -> None:
    featurize = make_featurizer("backbone", in_channels=1, backbone="resnet18")
    features = featurize(torch.rand(3, 1, 64, 64))
    assert features.shape == (3, 64 + 64 + 128 + 256 + 512)  # resnet18's five stages, pooled


def compose_classical(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="classical", overrides=overrides)


TINY_TEXTURES = [
    "dataset.image_size=32",
    "dataset.crop_size=32",
    "dataset.n_train=30",
    "dataset.n_test_good=4",
    "dataset.n_test_per_defect=2",
    "category=brick",
]


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_classical_job_fits_on_training_images_only(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    estimator_class = ESTIMATOR_CLASSES[name]
    fitted_on: list[np.ndarray] = []
    original_fit = estimator_class.fit

    def spy_fit(self, X, *args, **kwargs):  # noqa: N803 - scikit-learn's argument name
        fitted_on.append(np.array(X, copy=True))
        return original_fit(self, X, *args, **kwargs)

    monkeypatch.setattr(estimator_class, "fit", spy_fit)
    fewer_trees = ["detector.n_estimators=20"] if name == "iforest" else []
    cfg = compose_classical([f"detector={name}", "detector.pixel_size=8", *fewer_trees, *TINY_TEXTURES])
    metrics = classical_job(cfg, tmp_path)

    # 30 generated training images, 10 % held out for validation: 27 fit rows, 4 + 2·5 test images.
    assert len(fitted_on) == 1 and fitted_on[0].shape == (27, 64)
    assert metrics["n_train"] == 27 and metrics["n_val"] == 3 and metrics["n_test"] == 14
    from anomaly_attn.data.build import build_dataset
    from anomaly_attn.data.splits import CategorySplits

    datamodule = CategorySplits(build_dataset(cfg), category="brick", seed=0)
    datamodule.setup("test")
    train_rows = pixel_features(datamodule.train_images_tensor(), 8)
    test_rows = pixel_features(datamodule.test_set.images_tensor(), 8)
    np.testing.assert_array_equal(fitted_on[0], train_rows)
    assert not any((np.abs(fitted_on[0] - row).sum(axis=1) == 0).any() for row in test_rows)

    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["model"] == f"classical:{name}" and on_disk["dataset"] == "textures"
    assert on_disk["category"] == "brick" and on_disk["features"] == "pixels"
    assert 0.0 <= on_disk["image_auroc"] <= 1.0 and 0.0 < on_disk["image_f1_max"] <= 1.0
    rows = (tmp_path / "per_image_scores.csv").read_text().splitlines()
    assert rows[0] == "path,defect_type,label,score" and len(rows) == 1 + 14
    scores = [float(row.rsplit(",", 1)[1]) for row in rows[1:]]
    assert len(set(scores)) > 2, "continuous scores"


def test_the_old_command_name_translates_its_overrides() -> None:
    old = ["baseline=knn", "baseline.pixel_size=8", "+baseline.x=1", "~baseline.y"]
    new = ["detector=knn", "detector.pixel_size=8", "+detector.x=1", "~detector.y"]
    assert [renamed_argument(a) for a in old] == new
    assert renamed_argument("dataset=textures") == "dataset=textures"
    assert renamed_argument("baselines=1") == "baselines=1"


def test_report_reads_old_classical_runs_under_the_new_names() -> None:
    from anomaly_attn.run.record import translate_old_keys as normalise_metrics

    old = {"model": "baseline:knn", "baseline": {"name": "knn"}, "image_auroc": 0.9}
    new = {"model": "classical:knn", "detector": {"name": "knn"}, "image_auroc": 0.9}
    assert normalise_metrics(old) == new
    assert normalise_metrics({"model": "conv_ae", "baseline": 1}) == {"model": "conv_ae", "baseline": 1}


# Blocks every import of Lightning in the process it runs in, then runs the classical entry point.
CLASSICAL_WITHOUT_LIGHTNING = """
import sys

class NoLightning:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("lightning", "pytorch_lightning"):
            raise ImportError(f"{name} imported by the classical job")
        return None

sys.meta_path.insert(0, NoLightning())
from anomaly_attn.cli.classical import main
sys.exit(main())
"""


def test_the_classical_job_runs_with_lightning_unimportable(tmp_path: Path) -> None:
    """`python -m anomaly_attn.classical` end to end in a process where importing Lightning fails: the
    classical detectors and their run record need none of it (pyproject's classical-without-lightning
    contract says the same about the imports it can see)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "classical_without_lightning.py"
    script.write_text(CLASSICAL_WITHOUT_LIGHTNING)
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, str(script), "detector=knn", "detector.pixel_size=8", *TINY_TEXTURES,
         f"hydra.run.dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'data'}"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(repo), "HYDRA_FULL_ERROR": "1"},
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["model"] == "classical:knn" and 0.0 <= metrics["image_auroc"] <= 1.0
