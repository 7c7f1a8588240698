"""Synthetic anomalies pasted into held-out normal images, for choices that need pixel labels.

Real defect masks exist only in test sets, so the layer, variant, fusion, smoothing and score source are
chosen on held-out NORMAL training images with synthetic anomalies
(docs/METHOD.md, "Validation with synthetic anomalies"). Generators, registered by name:

- ``perlin`` (DRAEM, Zavrtanik et al., ICCV 2021): a thresholded, rotated Perlin-noise mask filled with a
  foreign texture ``T`` blended as ``I·(1−M) + (1−β)·T·M + β·I·M`` with ``β ~ U(0, beta_max)``;
- ``cutpaste`` (Li et al., CVPR 2021): a patch or a thin rotated scar of the same image, colour-jittered
  and pasted elsewhere;
- ``shapes``: one painted rectangle, ellipse or line of a random gray level (Fashion-MNIST's corruption,
  drawn by ``fmnist.draw_shape``), with extents scaled with the image side.

A generator is ``fn(image, rng, sources, **options) -> (anomalous image, mask)`` on float32 H×W×C images
in [0, 1] (C = 1 or 3); the mask is boolean H×W and never empty, and pixels outside it are unchanged.
Everything is drawn from ``rng``, so a seed reproduces the same anomalies bit for bit.
``build_synthetic_validation`` turns N held-out normals into 2N labelled images (N clean, then the same N
with one anomaly each); the Hydra group ``conf/validation`` holds the generator choice and options.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import skimage.data
import torch
from scipy import ndimage
from skimage.color import hsv2rgb, rgb2gray, rgb2hsv
from skimage.transform import resize

from anomaly_attn.common.registries import register_in
from anomaly_attn.data.fmnist import MAX_SHAPE_PX, MIN_SHAPE_PX, draw_shape, gray_level

log = logging.getLogger(__name__)

AnomalyGenerator = Callable[..., tuple[np.ndarray, np.ndarray]]
"""``fn(image, rng, sources, **options) -> (anomalous image, mask)``, see the module docstring."""

GENERATORS: dict[str, AnomalyGenerator] = {}
NO_ANOMALY = "none"
"""Generator name recorded for the clean copies in ``SyntheticValidation.generators``."""
MIN_VALIDATION_IMAGES = 4
"""Fewer held-out normals give no usable ranking of maps (AUROC/AUPRO over a handful of pixels sets)."""
SOURCE_KINDS = ("train_images", "skimage", "shifted_self")
SKIMAGE_TEXTURES = (
    "brick",
    "grass",
    "gravel",
    "camera",
    "coins",
    "moon",
    "text",
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
)
"""scikit-image sample images shipped inside the package (no download): textures, then photographs."""

PERLIN_MIN_SIZE = CUTPASTE_MIN_SIZE = 16
SHAPES_MIN_SIZE = 8
PERLIN_MIN_PERIOD_PX = 8
"""Smallest noise period (pixels per lattice cell): DRAEM's finest scale, 2^5 cells across 256 px."""
MIN_MASK_PIXELS = 4
MAX_ATTEMPTS = 100
"""Draws before a generator gives up on a mask that is too small or an anomaly that is invisible."""
CUTPASTE_REFERENCE_SIZE = 256
"""Image side at which CutPaste's scar sizes (width 2-16 px, length 10-25 px) are given."""
SHAPES_REFERENCE_SIZE = 28
"""Image side at which Fashion-MNIST's shapes measure 3-8 px."""


def register_generator(name: str) -> Callable[[AnomalyGenerator], AnomalyGenerator]:
    """Decorator adding a generator to the registry under ``name`` (a second, different one is an error)."""

    return register_in(GENERATORS, "synthetic anomaly generator", name)


def list_generators() -> list[str]:
    """Names of the registered generators, sorted."""
    return sorted(GENERATORS)


def get_generator(name: str) -> AnomalyGenerator:
    """The generator registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in GENERATORS:
        raise ValueError(
            f"unknown synthetic anomaly generator '{name}'; valid generators: {', '.join(list_generators())}"
        )
    return GENERATORS[name]


def generator_options(name: str) -> list[str]:
    """The options (keyword-only parameters) generator ``name`` accepts."""
    parameters = inspect.signature(get_generator(name)).parameters.values()
    return [parameter.name for parameter in parameters if parameter.kind is inspect.Parameter.KEYWORD_ONLY]


# --- foreign textures -------------------------------------------------------------------------------------


@functools.cache
def load_skimage_textures(names: tuple[str, ...] = SKIMAGE_TEXTURES) -> tuple[tuple[str, np.ndarray], ...]:
    """``(name, float32 H×W×C image in [0, 1])`` of each of ``names`` that loads from the local scikit-image
    install; one that fails (it would need a download, or is not in this version) is skipped with a warning.
    """
    loaded = []
    for name in names:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            log.warning("skimage.data has no image '%s'; it is not used as a synthetic texture", name)
            continue
        try:
            pixels = np.asarray(loader())
        except Exception as error:  # a missing file, no pooch, no network: all mean "skip it"
            log.warning(
                "skimage.data.%s() did not load offline (%s); it is not used as a texture", name, error
            )
            continue
        image = pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels.astype(np.float32)
        loaded.append((name, _with_channel_axis(image)[..., :3]))
    return tuple(loaded)


def _with_channel_axis(image: np.ndarray) -> np.ndarray:
    return image[..., None] if image.ndim == 2 else image


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """H×W×C (C = 1 or 3) → H×W×``channels``: luminance for gray, replication for colour."""
    if image.shape[2] == channels:
        return image
    if channels == 1:
        return rgb2gray(image)[..., None].astype(np.float32)
    return np.repeat(image, channels, axis=2)


def _resized(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    return resize(image, (height, width), order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)


def _vary(texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips, a 90° rotation (square images only), inversion, gamma and contrast: another normal
    image used as a texture must not be simply the same texture as the image it is pasted into."""
    if rng.random() < 0.5:
        texture = texture[:, ::-1]
    if rng.random() < 0.5:
        texture = texture[::-1]
    if texture.shape[0] == texture.shape[1]:
        texture = np.rot90(texture, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        texture = 1.0 - texture
    texture = np.clip(texture, 0.0, 1.0) ** np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    mean = texture.mean()
    texture = (texture - mean) * rng.uniform(0.6, 1.6) + mean
    return np.ascontiguousarray(np.clip(texture, 0.0, 1.0), dtype=np.float32)


def _shifted(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image itself, darkened (``I·f``) or brightened (``1 − (1 − I)·f``), f ~ U(0.3, 0.7): the same
    texture with another intensity, the simplest local change a reconstruction model must notice."""
    factor = rng.uniform(0.3, 0.7)
    shifted = image * factor if rng.random() < 0.5 else 1.0 - (1.0 - image) * factor
    return np.ascontiguousarray(shifted, dtype=np.float32)


class TextureSources:
    """Foreign textures for the ``perlin`` generator, drawn at random from the chosen kinds.

    Args:
        train_images: normal training images, N×H×W×C float in [0, 1] (never test images); each draw
            takes one, flipped/rotated and with its intensities inverted or gamma/contrast-jittered.
        kinds: which sources are used, a subset of ``SOURCE_KINDS`` (``train_images``, ``skimage``,
            ``shifted_self``: the image itself, darkened or brightened — the "darkened copy" of
            docs/METHOD.md, "Measured so far", whose anomalies ranked maps on held-out real defects
            as the real ones did).
        skimage_names: scikit-image sample images used by ``skimage`` (random crops, resized); those that
            do not load offline are skipped.
    """

    def __init__(
        self,
        train_images: np.ndarray | None = None,
        kinds: Sequence[str] = SOURCE_KINDS,
        skimage_names: Sequence[str] = SKIMAGE_TEXTURES,
    ) -> None:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)  # `sources: skimage` means [skimage]
        unknown = [kind for kind in kinds if kind not in SOURCE_KINDS]
        if unknown:
            raise ValueError(
                f"unknown texture source(s) {', '.join(map(str, unknown))}; valid sources: "
                f"{', '.join(SOURCE_KINDS)}"
            )
        self.kinds = tuple(dict.fromkeys(kinds))
        train_images = np.zeros((0, 1, 1, 1)) if train_images is None else np.asarray(train_images)
        if train_images.ndim != 4 or train_images.shape[3] not in (1, 3):
            raise ValueError(
                f"TextureSources needs train_images as N×H×W×C with C = 1 or 3, got {train_images.shape}"
            )
        self.train_images = np.asarray(train_images, dtype=np.float32)
        self.skimage_textures = load_skimage_textures(tuple(skimage_names)) if "skimage" in self.kinds else ()
        self.available_kinds = tuple(
            kind
            for kind in self.kinds
            if (kind == "train_images" and len(self.train_images))
            or (kind == "skimage" and self.skimage_textures)
            or kind == "shifted_self"
        )

    def draw(
        self,
        rng: np.random.Generator,
        height: int,
        width: int,
        channels: int,
        image: np.ndarray | None = None,
    ) -> np.ndarray:
        """One texture, float32 ``height×width×channels`` in [0, 1]; ``image`` (H×W×C) is the image the
        texture will be pasted into, needed by ``shifted_self``."""
        if not self.available_kinds:
            raise ValueError(
                f"no foreign texture to draw: sources {list(self.kinds)} hold no image (train_images: "
                f"{len(self.train_images)}, skimage: {len(self.skimage_textures)}); pass training images or "
                f"add 'skimage' to the generator's sources option"
            )
        kind = self.available_kinds[int(rng.integers(len(self.available_kinds)))]
        if kind == "shifted_self":
            if image is None:
                raise ValueError("the shifted_self texture source needs the image it is pasted into")
            return _shifted(image, rng)
        if kind == "train_images":
            texture = self.train_images[int(rng.integers(len(self.train_images)))]
        else:
            texture = self._crop(
                self.skimage_textures[int(rng.integers(len(self.skimage_textures)))][1], rng, height / width
            )
        return _vary(_to_channels(_resized(texture, height, width), channels), rng)

    @staticmethod
    def _crop(source: np.ndarray, rng: np.random.Generator, aspect: float) -> np.ndarray:
        """A random crop with the target's aspect (height / width), 25-100 % of the largest that fits."""
        source_height, source_width = source.shape[:2]
        largest_height = min(source_height, source_width * aspect)
        crop_height = max(1, min(source_height, round(rng.uniform(0.25, 1.0) * largest_height)))
        crop_width = max(1, min(source_width, round(crop_height / aspect)))
        top = int(rng.integers(source_height - crop_height + 1))
        left = int(rng.integers(source_width - crop_width + 1))
        return source[top : top + crop_height, left : left + crop_width]


# --- generators -------------------------------------------------------------------------------------------


def _checked_image(image: np.ndarray, generator: str, min_size: int) -> np.ndarray:
    """``image`` as float32 H×W×C; ``ValueError`` naming the generator for a bad shape or a small image."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(
            f"synthetic anomaly generator '{generator}' takes an H×W×C image with C = 1 or 3, "
            f"got shape {image.shape}"
        )
    height, width = image.shape[:2]
    if min(height, width) < min_size:
        raise ValueError(
            f"synthetic anomaly generator '{generator}' needs images of at least {min_size}×{min_size} px, "
            f"got {height}×{width}: raise dataset.image_size to {min_size} or more, or use another generator "
            f"(valid: {', '.join(list_generators())})"
        )
    return image


def _fade(t: np.ndarray) -> np.ndarray:
    return ((6 * t - 15) * t + 10) * t**3


def perlin_noise(
    shape: tuple[int, int], periods: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """2-D Perlin gradient noise in [-1, 1] with one lattice cell per ``periods`` pixels along each axis.

    DRAEM's ``rand_perlin_2d_np`` (random unit gradients, quintic fade, scaled by √2), but the image side
    need not be a multiple of the period.
    """
    coordinates = [np.arange(size) / period for size, period in zip(shape, periods, strict=True)]
    lattice = [int(np.floor(axis[-1])) + 2 for axis in coordinates]
    angles = rng.uniform(0.0, 2 * np.pi, size=lattice)
    cell_row, cell_col = (np.floor(axis).astype(int) for axis in coordinates)
    frac_row, frac_col = (axis - cell for axis, cell in zip(coordinates, (cell_row, cell_col), strict=True))

    cosines, sines = np.cos(angles), np.sin(angles)

    def corner(d_row: int, d_col: int) -> np.ndarray:
        """Dot product of each pixel's offset from the lattice corner (d_row, d_col) with its gradient."""
        rows, cols = cell_row + d_row, cell_col + d_col
        row_offsets, col_offsets = (frac_row - d_row)[:, None], frac_col - d_col
        return cosines[rows][:, cols] * row_offsets + sines[rows][:, cols] * col_offsets

    fade_row, fade_col = _fade(frac_row)[:, None], _fade(frac_col)[None, :]
    top_left, top_right, bottom_left, bottom_right = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
    top = top_left + fade_col * (top_right - top_left)
    bottom = bottom_left + fade_col * (bottom_right - bottom_left)
    return np.sqrt(2.0) * (top + fade_row * (bottom - top))


def perlin_mask(
    shape: tuple[int, int], rng: np.random.Generator, threshold: float = 0.5, max_scale_exponent: int = 5
) -> np.ndarray:
    """DRAEM's anomaly mask: Perlin noise with 2^U{0..e} cells per axis, rotated by U(−90°, 90°),
    thresholded. ``e`` is ``max_scale_exponent`` capped so a cell spans at least ``PERLIN_MIN_PERIOD_PX``.

    The noise is drawn on a square canvas as wide as the image's diagonal and cropped after rotating, so
    the corners are noise too (rotating the image-sized noise would leave them empty).
    """
    height, width = shape
    canvas = int(np.ceil(np.hypot(height, width)))
    caps = [min(max_scale_exponent, int(np.log2(side / PERLIN_MIN_PERIOD_PX))) for side in shape]
    exponents = [int(rng.integers(0, max(0, cap) + 1)) for cap in caps]
    periods = (height / 2 ** exponents[0], width / 2 ** exponents[1])
    noise = perlin_noise((canvas, canvas), periods, rng)
    rotated = ndimage.rotate(noise, rng.uniform(-90.0, 90.0), reshape=False, order=1, mode="nearest")
    top, left = (canvas - height) // 2, (canvas - width) // 2
    return rotated[top : top + height, left : left + width] > threshold


@register_generator("perlin")
def perlin(
    image: np.ndarray,
    rng: np.random.Generator,
    sources: TextureSources,
    *,
    beta_max: float = 0.8,
    threshold: float = 0.5,
    max_scale_exponent: int = 5,
    min_area_fraction: float = 0.005,
) -> tuple[np.ndarray, np.ndarray]:
    """DRAEM's anomaly: a Perlin mask (redrawn until it covers ``min_area_fraction`` of the image and
    at least ``MIN_MASK_PIXELS``) filled with ``(1−β)·T + β·I``, ``T`` from ``sources``,
    β ~ U(0, beta_max)."""
    image = _checked_image(image, "perlin", PERLIN_MIN_SIZE)
    height, width, channels = image.shape
    min_pixels = max(MIN_MASK_PIXELS, int(np.ceil(min_area_fraction * height * width)))
    for _ in range(MAX_ATTEMPTS):
        mask = perlin_mask((height, width), rng, threshold, max_scale_exponent)
        if mask.sum() >= min_pixels:
            break
    else:
        raise ValueError(
            f"perlin: no mask of {min_pixels} px or more in {MAX_ATTEMPTS} draws on a {height}×{width} image "
            f"with threshold {threshold} (the noise lies in [-1, 1]); lower options.perlin.threshold or "
            f"options.perlin.min_area_fraction"
        )
    texture = sources.draw(rng, height, width, channels, image=image)
    beta = rng.uniform(0.0, beta_max)
    blended = np.clip((1.0 - beta) * texture + beta * image, 0.0, 1.0)
    return np.where(mask[..., None], blended, image).astype(np.float32), mask


def _colour_jitter(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """torchvision's ColorJitter(strength, strength, strength, strength) on a K×C list of pixels:
    brightness and contrast, and for colour images saturation and hue."""
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    pixels = pixels * rng.uniform(low, high)
    gray = pixels.mean() if pixels.shape[1] == 1 else rgb2gray(pixels[None])[0].mean()
    pixels = np.clip((pixels - gray) * rng.uniform(low, high) + gray, 0.0, 1.0)
    if pixels.shape[1] == 3:
        luminance = rgb2gray(pixels[None])[0][:, None]
        pixels = np.clip(luminance + (pixels - luminance) * rng.uniform(low, high), 0.0, 1.0)
        hsv = rgb2hsv(pixels[None])
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-min(strength, 0.5), min(strength, 0.5))) % 1.0
        pixels = hsv2rgb(hsv)[0]
    return np.clip(pixels, 0.0, 1.0)


def _patch_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    area_range: Sequence[float],
    aspect_range: Sequence[float],
) -> np.ndarray:
    """CutPaste's patch: area U(area_range)·H·W, log-uniform aspect (width / height) in ``aspect_range``."""
    height, width = shape
    area = rng.uniform(*area_range) * height * width
    aspect = np.exp(rng.uniform(np.log(aspect_range[0]), np.log(aspect_range[1])))
    patch_height = int(np.clip(round(np.sqrt(area / aspect)), 1, height - 1))
    patch_width = int(np.clip(round(np.sqrt(area * aspect)), 1, width - 1))
    top = int(rng.integers(height - patch_height + 1))
    left = int(rng.integers(width - patch_width + 1))
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + patch_height, left : left + patch_width] = True
    return mask


def _scar_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    width_range: Sequence[float],
    length_range: Sequence[float],
    max_angle: float,
) -> np.ndarray:
    """CutPaste's scar: a rectangle ``width × length`` (given at ``CUTPASTE_REFERENCE_SIZE`` px, scaled
    with the image; at least 1 px wide), its long side tilted by U(−max_angle, max_angle)° from vertical."""
    height, width = shape
    scale = min(shape) / CUTPASTE_REFERENCE_SIZE
    scar_width = max(1.0, rng.uniform(*width_range) * scale)
    scar_length = max(float(MIN_MASK_PIXELS), rng.uniform(*length_range) * scale)
    angle = np.deg2rad(rng.uniform(-max_angle, max_angle))
    along = np.array([np.cos(angle), np.sin(angle)])  # (row, col) direction of the long side
    across = np.array([-np.sin(angle), np.cos(angle)])
    reach = np.abs(along) * scar_length / 2 + np.abs(across) * scar_width / 2
    centre = [
        rng.uniform(r, side - 1 - r) if side - 1 > 2 * r else (side - 1) / 2
        for r, side in zip(reach, shape, strict=True)
    ]
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    offset_row, offset_col = rows - centre[0], cols - centre[1]
    return (np.abs(offset_row * along[0] + offset_col * along[1]) <= scar_length / 2) & (
        np.abs(offset_row * across[0] + offset_col * across[1]) <= scar_width / 2
    )


@register_generator("cutpaste")
def cutpaste(
    image: np.ndarray,
    rng: np.random.Generator,
    sources: TextureSources,
    *,
    scar_probability: float = 0.5,
    area_range: Sequence[float] = (0.02, 0.15),
    aspect_range: Sequence[float] = (0.3, 3.3),
    scar_width: Sequence[float] = (2.0, 16.0),
    scar_length: Sequence[float] = (10.0, 25.0),
    scar_max_angle: float = 45.0,
    jitter: float = 0.1,
    min_difference: float = 0.02,
) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste: a patch (probability ``1 − scar_probability``) or a scar of the image, colour-jittered by
    ``jitter`` and pasted at a random other place; the mask is the pasted pixels.

    A paste that barely changes the image (mean absolute change inside the mask below ``min_difference``,
    e.g. background pasted on background) is redrawn; after ``MAX_ATTEMPTS`` the most visible one is kept,
    and an image that no paste changes at all (a uniform image) is an error.
    """
    image = _checked_image(image, "cutpaste", CUTPASTE_MIN_SIZE)
    height, width = image.shape[:2]
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(MAX_ATTEMPTS):
        if rng.random() < scar_probability:
            mask = _scar_mask((height, width), rng, scar_width, scar_length, scar_max_angle)
        else:
            mask = _patch_mask((height, width), rng, area_range, aspect_range)
        rows, cols = np.nonzero(mask)
        if len(rows) < MIN_MASK_PIXELS:
            continue
        # the cut is the pasted region shifted by a random non-zero offset that keeps it inside the image
        shift_row = int(rng.integers(-rows.min(), height - rows.max()))
        shift_col = int(rng.integers(-cols.min(), width - cols.max()))
        if shift_row == 0 and shift_col == 0:
            continue
        pasted = _colour_jitter(image[rows + shift_row, cols + shift_col], rng, jitter)
        difference = float(np.abs(pasted - image[rows, cols]).mean())
        if best is None or difference > best[0]:
            best = (difference, mask, pasted)
        if difference >= min_difference:
            break
    if best is None or best[0] == 0.0:
        raise ValueError(
            f"cutpaste: none of {MAX_ATTEMPTS} pastes changed the {height}×{width} image (is it uniform?); "
            f"use the perlin generator, which brings in a foreign texture"
        )
    _, mask, pasted = best
    anomalous = image.copy()
    anomalous[mask] = pasted
    return anomalous, mask


@register_generator("shapes")
def shapes(
    image: np.ndarray, rng: np.random.Generator, sources: TextureSources
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's gray corruption: one rectangle, ellipse or line (``fmnist.draw_shape``, 3-8 px at
    28 px, scaled with the image side), dilated by 1 px and painted with a random gray level that differs
    from the covered pixels by ``fmnist.MIN_GRAY_CONTRAST`` on average (``fmnist.gray_level``)."""
    image = _checked_image(image, "shapes", SHAPES_MIN_SIZE)
    height, width = image.shape[:2]
    side = min(height, width)
    min_extent = max(1, round(MIN_SHAPE_PX * side / SHAPES_REFERENCE_SIZE))
    max_extent = max(min_extent, round(MAX_SHAPE_PX * side / SHAPES_REFERENCE_SIZE))
    square, _ = draw_shape(rng, size=side, min_extent=min_extent, max_extent=max_extent)
    top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + side, left : left + side] = square
    level = gray_level(rng, np.round(image[mask] * 255.0)) / 255.0
    anomalous = image.copy()
    anomalous[mask] = level
    return anomalous, mask


# --- validation set ---------------------------------------------------------------------------------------


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


def _apply(
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
    if not names:
        raise ValueError(
            f"build_synthetic_validation got no generators (validation=none means: build no synthetic "
            f"validation); valid generators: {', '.join(list_generators())}"
        )
    for name in names:
        get_generator(name)
    options = _checked_options(names, options)
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
    textures = _as_hwc(train_images, "train_images")
    seeds = np.random.SeedSequence(seed)
    (subset_seed,) = seeds.spawn(1)
    selected = np.arange(len(clean))
    if max_images is not None and len(clean) > max_images:
        selected = np.sort(np.random.default_rng(subset_seed).choice(len(clean), max_images, replace=False))
    clean = clean[selected]
    sources = {
        name: TextureSources(textures, kinds=options.get(name, {}).get("sources", SOURCE_KINDS))
        for name in dict.fromkeys(names)
    }
    anomalous, masks, used = [], [], []
    for position, image_seed in enumerate(seeds.spawn(len(clean))):
        name = names[position % len(names)]
        generator_kwargs = {key: value for key, value in options.get(name, {}).items() if key != "sources"}
        image, mask = _apply(
            name, clean[position], np.random.default_rng(image_seed), sources[name], generator_kwargs
        )
        anomalous.append(image)
        masks.append(mask)
        used.append(name)
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
