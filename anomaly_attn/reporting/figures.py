"""Figures: anomaly-map overlays, the qualitative grid (images above their map overlays), ROC and
per-defect charts."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from anomaly_attn.common.atomic import atomic_path  # noqa: E402


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


def _save_figure(fig: plt.Figure, path: Path, title: str | None) -> None:
    """Optional title, tight layout, write, and free the figure (sweeps draw many)."""
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def colour_limit(threshold: float) -> float | None:
    """One colour scale for all maps of a run: twice its validation threshold (red = well above what
    normal validation images reach); None (per-image scale) when no threshold is known."""
    return 2.0 * threshold if np.isfinite(threshold) and threshold > 0 else None


def save_grid(
    samples: list[dict[str, Any]], path: Path, title: str | None = None, vmax: float | None = None
) -> None:
    """Top row: test images (ground truth in green); bottom row: attention overlays (jet), on one
    colour scale [0, vmax] when ``vmax`` is given, else each image min-max normalised."""
    _draw_grid([(sample["defect_type"], sample, vmax) for sample in samples], path, title, height=4.3)


def _draw_grid(
    columns: list[tuple[str, dict[str, Any], float | None]], path: Path, title: str | None, height: float
) -> None:
    """Two rows per ``(column title, sample, vmax)``: the image with its ground-truth outline above
    its jet overlay on [0, vmax] (per-image min-max when vmax is None)."""
    fig, axes = plt.subplots(2, len(columns), figsize=(2.4 * len(columns), height), squeeze=False)
    for j, (label, sample, vmax) in enumerate(columns):
        axes[0, j].imshow(to_display(sample["image"]))
        if sample["mask"].any():
            axes[0, j].contour(sample["mask"], levels=[0.5], colors="lime", linewidths=0.8)
        axes[0, j].set_title(_wrap(label, 26), fontsize=9)
        axes[1, j].imshow(
            jet_overlay(sample["image"], sample["map"], vmin=None if vmax is None else 0.0, vmax=vmax)
        )
        for ax in axes[:, j]:
            ax.axis("off")
    _save_figure(fig, path, title)


def save_samples(samples: list[dict[str, Any]], path: Path, threshold: float) -> None:
    """The grid's samples as a small ``.npz`` (images as uint8), so reports can draw cross-run figures
    without re-running models: images N×C×H×W, masks and maps N×H×W, labels, scores, defect types, and
    the validation pixel threshold of the map."""
    np.savez_compressed(
        path,
        images=np.stack([np.clip(s["image"], 0, 1) * 255 for s in samples]).round().astype(np.uint8),
        masks=np.stack([s["mask"] for s in samples]).astype(np.uint8),
        maps=np.stack([s["map"] for s in samples]).astype(np.float32),
        labels=np.array([s["label"] for s in samples], dtype=np.int64),
        scores=np.array([s["score"] for s in samples], dtype=np.float64),
        defect_types=np.array([s["defect_type"] for s in samples]),
        threshold=np.float64(threshold),
    )


def load_samples(path: Path) -> tuple[list[dict[str, Any]], float]:
    """The samples and the pixel threshold written by :func:`save_samples`."""
    with np.load(path, allow_pickle=False) as data:
        samples = [
            {
                "image": data["images"][i].astype(np.float32) / 255.0,
                "mask": data["masks"][i],
                "map": data["maps"][i],
                "label": int(data["labels"][i]),
                "score": float(data["scores"][i]),
                "defect_type": str(data["defect_types"][i]),
            }
            for i in range(len(data["labels"]))
        ]
        return samples, float(data["threshold"])


def _wrap(text: str, width: int) -> str:
    """Each line of ``text`` wrapped at ``width`` characters (map labels have no spaces to break at, so
    long words are cut), so that titles and legend entries stay inside their figure."""
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def qualitative_grid(columns: list[tuple[str, dict[str, Any], float]], path: Path, title: str = "") -> None:
    """One column per ``(label, sample, pixel threshold)``: the defective test image (ground truth in
    green) above its selected-map overlay, coloured from 0 to twice that run's validation threshold."""
    _draw_grid(
        [
            (f"{label}\n{sample['defect_type']}", sample, colour_limit(threshold))
            for label, sample, threshold in columns
        ],
        path,
        title,
        height=5.2,
    )


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) of ``score >= t`` over every distinct threshold, from
    (0, 0) to (1, 1): scikit-learn's ``roc_curve`` with every point kept (tied scores move both rates at
    once, so the trapezoid area equals the AUROC). A set with one class only gives the diagonal's ends."""
    from sklearn.metrics import roc_curve

    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr


class RocCurve(NamedTuple):
    """One ROC curve: its legend label, image scores and 0/1 labels. A ``control`` curve (the residual
    drawn for comparison) is dashed, in the colour of the curve before it (its run's selected score)."""

    label: str
    scores: np.ndarray
    labels: np.ndarray
    control: bool = False


def roc_figure(panels: dict[str, list[RocCurve]], path: Path, title: str = "") -> None:
    """Image-level ROC curves, one panel per key (two panels a row), legend below each panel with the
    AUROC in brackets: false-positive rate on x, true-positive rate on y (the research code had them
    swapped). The figure is 880 px wide for one panel, 1210 px for more, at 110 dpi."""
    n = len(panels)
    cols = 1 if n == 1 else 2
    rows = -(-n // cols)
    entries = max(len(curves) for curves in panels.values())
    # Room under each panel for its legend (~0.4 in per wrapped entry), so legends never cover curves.
    panel_height = 4.2 + 0.4 * entries
    width = 8.0 if n == 1 else 11.0
    fig, axes = plt.subplots(rows, cols, figsize=(width, panel_height * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (panel, curves) in zip(axes.flat, panels.items(), strict=False):
        colour_index = -1
        for curve in curves:
            colour_index += 0 if curve.control else 1
            fpr, tpr = roc_points(curve.scores, curve.labels)
            area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
            ax.plot(
                fpr, tpr, lw=1.6, ls="--" if curve.control else "-",
                color=colours[colour_index % len(colours)], label=_wrap(f"{curve.label} ({area:.3f})", 48),
            )
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls=":")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false-positive rate", ylabel="true-positive rate")
        ax.set_title(panel, fontsize=11)
        ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(0.0, -0.14), frameon=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    _save_figure(fig, path, title)


def per_defect_bars(
    panels: dict[str, dict[str, dict[str, float]]], path: Path, metric: str, title: str = ""
) -> None:
    """Grouped bars: one panel per key, one group per defect type, one bar per series
    (``panels[panel][series][defect] = value``)."""
    n = len(panels)
    fig, axes = plt.subplots(n, 1, figsize=(11.0, 3.2 * n), squeeze=False)
    for ax, (panel, series) in zip(axes[:, 0], panels.items(), strict=True):
        defects = sorted({d for values in series.values() for d in values})
        width = 0.8 / max(len(series), 1)
        positions = np.arange(len(defects))
        for k, (name, values) in enumerate(series.items()):
            heights = [values.get(d, np.nan) for d in defects]
            offset = (k - (len(series) - 1) / 2) * width
            ax.bar(positions + offset, heights, width, label=_wrap(name, 36))
        ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
        ax.set_xticks(positions, defects, fontsize=9, rotation=20)
        ax.set(ylim=(0, 1), ylabel=metric)
        ax.set_title(panel, fontsize=11)
        ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save_figure(fig, path, title)


def save_samples_figure(synthetic: Any, path: Path, count: int = 8) -> Path:
    """A PNG of the first ``count`` anomalous samples, one column each titled with its generator: the clean
    image, the anomalous image, and the anomalous image with the mask tinted red and outlined in green.
    Written to a temporary file and renamed, so a killed job never leaves a truncated figure.

    ``synthetic`` is a ``data.synthetic_validation.SyntheticValidation`` (images, masks, labels: clean ones
    first, then their anomalous copies; generators), read by attribute so reporting stays free of data/."""
    anomalous = np.flatnonzero(synthetic.labels.numpy() == 1)[:count]
    if len(anomalous) == 0:
        raise ValueError("save_samples_figure: the synthetic validation set holds no anomalous image")
    n_clean = int((synthetic.labels == 0).sum())
    path = Path(path)
    fig, axes = plt.subplots(3, len(anomalous), figsize=(1.7 * len(anomalous), 5.4), squeeze=False)
    for column, index in enumerate(anomalous):
        mask = synthetic.masks[index, 0].numpy() > 0.5
        image = to_display(synthetic.images[index].numpy())
        tinted = image.copy()
        tinted[mask] = 0.5 * tinted[mask] + 0.5 * np.array([1.0, 0.1, 0.1])
        for row, panel in enumerate((to_display(synthetic.images[index - n_clean].numpy()), image, tinted)):
            axes[row, column].imshow(panel, interpolation="nearest")
            axes[row, column].axis("off")
        axes[2, column].contour(mask, levels=[0.5], colors="lime", linewidths=0.8)
        axes[0, column].set_title(synthetic.generators[index], fontsize=8)
    fig.suptitle("synthetic validation: clean / anomalous / mask", fontsize=9)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path
