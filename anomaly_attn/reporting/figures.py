"""Figures: anomaly-map overlays and the qualitative grid (images above their attention overlays)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def to_display(image: np.ndarray) -> np.ndarray:
    """C×H×W in [0, 1] → H×W×3 for matplotlib (grayscale replicated)."""
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if image.ndim == 3 and image.shape[0] in (1, 3):
        image = image.transpose(1, 2, 0)
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def normalise_map(
    anomaly_map: np.ndarray, vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    lo = float(np.min(anomaly_map)) if vmin is None else vmin
    hi = float(np.max(anomaly_map)) if vmax is None else vmax
    return np.clip((anomaly_map - lo) / (hi - lo + 1e-12), 0.0, 1.0)


def jet_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Blend the jet-coloured map over the image (H×W×3 in [0, 1])."""
    heat = plt.get_cmap("jet")(normalise_map(anomaly_map, vmin, vmax))[..., :3]
    return (1 - alpha) * to_display(image) + alpha * heat


def _contour(mask: np.ndarray) -> np.ndarray:
    """Boolean outline (inner boundary) of a binary mask."""
    from scipy.ndimage import binary_erosion

    region = mask > 0.5
    return region & ~binary_erosion(region, iterations=1, border_value=0)


def overlay_figure(
    sample: dict[str, Any],
    path: Path,
    threshold: float | None = None,
    min_size: int = 192,
    vmax: float | None = None,
) -> None:
    """One test image as three panels side by side: original | jet map overlay | map ≥ validation
    threshold (red), each with the ground-truth outline in green. Drawn with NumPy + PIL (a few ms per
    image, against ~0.2 s for a matplotlib figure) because a test set writes one per image.
    ``vmax`` fixes the colour scale across images (None: per-image min-max, which makes every
    normal image look anomalous)."""
    from PIL import Image

    image = to_display(sample["image"])
    anomaly_map = np.asarray(sample["map"], dtype=np.float32)
    outline = _contour(np.asarray(sample["mask"]))
    panels = [
        image.copy(),
        jet_overlay(sample["image"], anomaly_map, vmin=None if vmax is None else 0.0, vmax=vmax),
    ]
    if threshold is not None and np.isfinite(threshold):
        predicted = image.copy()
        hit = anomaly_map >= threshold
        predicted[hit] = 0.4 * predicted[hit] + 0.6 * np.array([1.0, 0.1, 0.1])
        panels.append(predicted)
    for panel in panels:
        panel[outline] = (0.1, 1.0, 0.1)
    scale = max(1, int(np.ceil(min_size / image.shape[0])))
    gap = np.ones((image.shape[0], 1, 3))
    strip = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    picture = Image.fromarray((np.clip(strip, 0, 1) * 255).astype(np.uint8))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    picture.save(path)


def save_grid(
    samples: list[dict[str, Any]], path: Path, title: str | None = None, vmax: float | None = None
) -> None:
    """Top row: test images (ground truth in green); bottom row: attention overlays (jet), on one
    colour scale [0, vmax] when ``vmax`` is given, else each image min-max normalised."""
    n = len(samples)
    fig, axes = plt.subplots(2, n, figsize=(2.0 * n, 4.3), squeeze=False)
    for j, sample in enumerate(samples):
        axes[0, j].imshow(to_display(sample["image"]))
        if sample["mask"].any():
            axes[0, j].contour(sample["mask"], levels=[0.5], colors="lime", linewidths=0.8)
        axes[0, j].set_title(sample["defect_type"], fontsize=8)
        axes[1, j].imshow(
            jet_overlay(sample["image"], sample["map"], vmin=None if vmax is None else 0.0, vmax=vmax)
        )
        for ax in axes[:, j]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
