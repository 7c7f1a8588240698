"""The synthetic validation set: N held-out normals → 2N labelled images (N clean, then the same N with one
synthetic anomaly each, from the generators of ``anomaly_attn.data.synthetic``).

Everything is drawn from one seed, so a seed reproduces the same set bit for bit; the Hydra group
``conf/validation`` holds the generator choice and options.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from anomaly_attn.data.synthetic import generator_options, get_generator, list_generators
from anomaly_attn.data.synthetic_sources import SOURCE_KINDS, TextureSources

NO_ANOMALY = "none"
"""Generator name recorded for the clean copies in ``SyntheticValidation.generators``."""
MIN_VALIDATION_IMAGES = 4
"""Fewer held-out normals give no usable ranking of maps (AUROC/AUPRO over a handful of pixels sets)."""


@dataclass
class SyntheticValidation:
    """Held-out normals and their anomalous copies: the first N entries clean (label 0, empty mask), the
    next N the same images with one synthetic anomaly each (label 1), in the same order."""

    images: torch.Tensor
    """float32 2N×C×H×W in [0, 1]."""
    masks: torch.Tensor
    """float32 2N×1×H×W in {0, 1}."""
    labels: torch.Tensor
    """int64 2N."""
    generators: list[str]
    """Generator name per image, ``"none"`` for the clean ones."""

    def __len__(self) -> int:
        return len(self.labels)


def _as_hwc(images: torch.Tensor, what: str) -> np.ndarray:
    """N×C×H×W tensor in [0, 1] → float32 N×H×W×C array; ``ValueError`` naming ``what`` otherwise."""
    array = torch.as_tensor(images).detach().cpu().to(torch.float32).numpy()
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"{what} must be N×C×H×W with C = 1 or 3, got shape {tuple(array.shape)}")
    if array.size and (array.min() < -1e-6 or array.max() > 1 + 1e-6):
        raise ValueError(
            f"{what} must lie in [0, 1], found [{array.min():.3g}, {array.max():.3g}]: pass the images "
            f"before any mean/std normalisation"
        )
    channels_last = array.transpose(0, 2, 3, 1).copy()  # the one copy (never clip the caller's tensor)
    return np.clip(channels_last, 0.0, 1.0, out=channels_last)


def _checked_options(
    generators: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """Per generator: its options, with unknown generator names or option names reported."""
    options = {str(name): dict(value or {}) for name, value in (options or {}).items()}
    for name in options:
        get_generator(name)
    for name in generators:
        valid = generator_options(name)
        unknown = [key for key in options.get(name, {}) if key not in (*valid, "sources")]
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)} for synthetic anomaly generator '{name}'; valid "
                f"options: {', '.join(['sources', *valid])}"
            )
    return options


def apply_generator(
    name: str, image: np.ndarray, rng: np.random.Generator, sources: TextureSources, options: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Run generator ``name`` and check its output against the contract (a broken generator is a bug)."""
    anomalous, mask = get_generator(name)(image, rng, sources, **options)
    anomalous, mask = np.asarray(anomalous, dtype=np.float32), np.asarray(mask)
    if (
        anomalous.shape != image.shape
        or mask.shape != image.shape[:2]
        or mask.dtype != bool
        or not mask.any()
    ):
        raise RuntimeError(
            f"synthetic anomaly generator '{name}' broke its contract on a {image.shape} image: returned "
            f"image {anomalous.shape}, mask {mask.shape} {mask.dtype} with {int(mask.sum())} pixels set "
            f"(needs the image's shape and a non-empty boolean H×W mask)"
        )
    return np.clip(anomalous, 0.0, 1.0), mask


def build_synthetic_validation(
    val_images: torch.Tensor,
    train_images: torch.Tensor,
    generators: list[str],
    seed: int,
    max_images: int | None = None,
    options: dict[str, dict] | None = None,
    val_fraction: float | None = None,
) -> SyntheticValidation:
    """N held-out normals → 2N labelled images: the clean ones, then each with one synthetic anomaly.

    Args:
        val_images: held-out normal images, N×C×H×W float in [0, 1].
        train_images: normal training images, M×C×H×W in [0, 1], the ``train_images`` texture source
            (never test images).
        generators: generator names; image i gets ``generators[i % len(generators)]``.
        seed: the same inputs and seed give bitwise identical tensors.
        max_images: use at most this many held-out normals (a seeded subset, in their original order).
        options: per generator name, its options; ``sources`` (a subset of ``SOURCE_KINDS``) chooses its
            foreign textures.
        val_fraction: ``dataset.val_fraction``, only to make the too-few-images error actionable.

    Raises:
        ValueError: no or unknown generators or options, fewer than ``MIN_VALIDATION_IMAGES`` images,
            images not N×C×H×W in [0, 1], or a generator that cannot work on these images.
    """
    names = [str(name) for name in generators]
    options = checked_generators(names, options)
    clean = _checked_val_images(val_images, max_images, val_fraction)
    textures = _as_hwc(train_images, "train_images")
    seeds = np.random.SeedSequence(seed)
    clean = clean[_subset(len(clean), max_images, seeds.spawn(1)[0])]
    sources = {
        name: TextureSources(textures, kinds=options.get(name, {}).get("sources", SOURCE_KINDS))
        for name in dict.fromkeys(names)
    }
    anomalous, masks, used = [], [], []
    for position, image_seed in enumerate(seeds.spawn(len(clean))):
        name = names[position % len(names)]
        generator_kwargs = {key: value for key, value in options.get(name, {}).items() if key != "sources"}
        image, mask = apply_generator(
            name, clean[position], np.random.default_rng(image_seed), sources[name], generator_kwargs
        )
        anomalous.append(image)
        masks.append(mask)
        used.append(name)
    return _labelled(clean, anomalous, masks, used)


def checked_generators(
    names: list[str], options: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """The options per generator, after checking that ``names`` is not empty and every name is known."""
    if not names:
        raise ValueError(
            f"build_synthetic_validation got no generators (validation=none means: build no synthetic "
            f"validation); valid generators: {', '.join(list_generators())}"
        )
    for name in names:
        get_generator(name)
    return _checked_options(names, options)


def _checked_val_images(
    val_images: torch.Tensor, max_images: int | None, val_fraction: float | None
) -> np.ndarray:
    """The held-out normals as N×H×W×C, after checking there are (and ``max_images`` allows) enough."""
    clean = _as_hwc(val_images, "val_images")
    if len(clean) < MIN_VALIDATION_IMAGES:
        given = f" (now given as {val_fraction})" if val_fraction is not None else ""
        raise ValueError(
            f"the validation split has {len(clean)} images; synthetic validation needs at least "
            f"{MIN_VALIDATION_IMAGES}: raise dataset.val_fraction{given} or add training images"
        )
    if max_images is not None and max_images < MIN_VALIDATION_IMAGES:
        raise ValueError(
            f"validation.max_images is {max_images}; synthetic validation needs at least "
            f"{MIN_VALIDATION_IMAGES} images: raise it, or set it to null to use all {len(clean)}"
        )
    return clean


def _subset(count: int, max_images: int | None, seed: np.random.SeedSequence) -> np.ndarray:
    """Indices of the held-out normals used: all, or ``max_images`` of them drawn with ``seed``, sorted."""
    if max_images is not None and count > max_images:
        return np.sort(np.random.default_rng(seed).choice(count, max_images, replace=False))
    return np.arange(count)


def _labelled(
    clean: np.ndarray, anomalous: list[np.ndarray], masks: list[np.ndarray], used: list[str]
) -> SyntheticValidation:
    """The clean images (label 0, empty masks) followed by their anomalous copies (label 1)."""
    images = np.concatenate([clean, np.stack(anomalous)]).transpose(0, 3, 1, 2)
    all_masks = np.concatenate([np.zeros((len(clean), *clean.shape[1:3]), dtype=bool), np.stack(masks)])
    return SyntheticValidation(
        images=torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)),
        masks=torch.from_numpy(all_masks[:, None].astype(np.float32)),
        labels=torch.cat(
            [torch.zeros(len(clean), dtype=torch.int64), torch.ones(len(clean), dtype=torch.int64)]
        ),
        generators=[NO_ANOMALY] * len(clean) + used,
    )
