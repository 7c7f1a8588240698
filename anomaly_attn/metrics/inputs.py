"""The inputs of the metric functions: numpy arrays or torch tensors, checked before any metric is computed.

Anomaly maps and binary ground-truth masks (``H×W``, ``N×H×W`` or ``N×1×H×W``) become one ``N×H×W`` float
array and one boolean array of the same shape; a NaN or inf score is an error naming the image, a mask or
label other than 0/1 an error (never rounded), and differing shapes an error saying what to resize.
"""

from __future__ import annotations

import math

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _to_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.is_floating_point() and values.dtype not in (torch.float32, torch.float64):
            values = values.float()
        return values.numpy()
    values = np.asarray(values)
    if values.dtype.kind == "f" and values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float32)  # float16: float32 holds it exactly
    return values


def _as_binary(values: np.ndarray, name: str) -> np.ndarray:
    """Boolean view of 0/1 ground truth; anything else (resized or JPEG masks) is an error, not rounded."""
    if values.dtype == bool:
        return values
    is_one = values == 1
    # Binary exactly when every value is a 0 or a 1 (NaN is neither): two compares, two cheap counts
    # (counting the nonzero floats directly is several times slower than a compare).
    if np.count_nonzero(is_one) + np.count_nonzero(values == 0) != values.size:
        is_binary = is_one | (values == 0)
        bad_values = np.unique(values[~is_binary])[:5]
        raise ValueError(
            f"{name} must contain only 0 and 1, found {int((~is_binary).sum())} other values "
            f"(e.g. {bad_values.tolist()}); threshold masks at 0.5 after resizing and store them as PNG."
        )
    return is_one


def _validate_fpr_limit(fpr_limit: float) -> float:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}; the MVTec AD protocol uses 0.3.")
    return float(fpr_limit)


def check_finite(scores: np.ndarray, what: str = "anomaly maps") -> None:
    """Raise if any score is NaN or inf, naming the images (indices along the first axis) that hold them."""
    if scores.size == 0:
        return
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(scores, axis=None)
    if math.isfinite(total):
        return  # a sum propagates NaN and inf: one cheap pass decides the common case
    per_image = scores.reshape(len(scores), -1) if scores.ndim > 1 else scores.reshape(-1, 1)
    bad_images = np.flatnonzero(~np.isfinite(per_image).all(axis=1))
    if bad_images.size == 0:
        return  # finite scores whose sum overflowed (values near the float maximum)
    counts = ", ".join(
        f"index {int(i)}: {int(np.isnan(per_image[i]).sum())} NaN, {int(np.isinf(per_image[i]).sum())} inf"
        for i in bad_images[:10]
    )
    more = f" and {len(bad_images) - 10} more" if len(bad_images) > 10 else ""
    raise ValueError(
        f"{what} contain NaN/inf at {len(bad_images)} of {len(per_image)} images ({counts}{more}); "
        "metrics are undefined for them: fix the map computation (e.g. a division by a zero norm) or "
        "drop those images."
    )


def prepare_maps_and_masks(maps: ArrayLike, masks: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(scores N×H×W float, defect N×H×W bool)`` from maps/masks given as ``H×W``, ``N×H×W`` or
    ``N×1×H×W`` numpy arrays or torch tensors; raise on shape mismatch, NaN/inf scores (naming the
    image) or non-binary masks."""
    score_array, mask_array = _to_numpy(maps), _to_numpy(masks)
    normalized = []
    for array in (score_array, mask_array):
        if array.ndim == 4 and array.shape[1] == 1:
            array = array[:, 0]
        elif array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise ValueError(
                f"anomaly maps and masks must be H×W, N×H×W or N×1×H×W; got maps {tuple(score_array.shape)} "
                f"and masks {tuple(mask_array.shape)}"
            )
        normalized.append(array)
    score_array, mask_array = normalized
    if score_array.shape != mask_array.shape:
        raise ValueError(
            f"anomaly maps {tuple(score_array.shape)} and masks {tuple(mask_array.shape)} differ in shape; "
            "resize the maps to the mask size before evaluating."
        )
    if not np.issubdtype(score_array.dtype, np.floating):
        score_array = score_array.astype(np.float32)
    check_finite(score_array)
    return score_array, _as_binary(mask_array, "masks")
