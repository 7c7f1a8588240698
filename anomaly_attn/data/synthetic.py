"""Synthetic anomaly generators, registered by name, pasted into held-out normal images.

Real defect masks exist only in test sets, so the layer, variant, fusion, smoothing and score source are
chosen on held-out NORMAL training images with synthetic anomalies
(docs/METHOD.md, "Validation with synthetic anomalies"). Generators, registered by name in ``GENERATORS``:

- ``perlin`` (DRAEM, Zavrtanik et al., ICCV 2021): a thresholded, rotated Perlin-noise mask filled with a
  foreign texture ``T`` blended as ``I·(1−M) + (1−β)·T·M + β·I·M`` with ``β ~ U(0, beta_max)``;
- ``cutpaste`` (Li et al., CVPR 2021): a patch or a thin rotated scar of the same image, colour-jittered
  and pasted elsewhere;
- ``shapes``: one painted rectangle, ellipse or line of a random gray level (Fashion-MNIST's corruption,
  drawn by ``painted_shapes.draw_shape``), with extents scaled with the image side;
- ``scratch``: one thin (1-2 px, not scaled) straight or slightly bent line, bright or dark: the thin
  defects (white lines, cracks) that smoothing erases and that the others do not cover.

A generator is ``fn(image, rng, sources, **options) -> (anomalous image, mask)`` on float32 H×W×C images
in [0, 1] (C = 1 or 3); the mask is boolean H×W and never empty, and pixels outside it are unchanged.
Everything is drawn from ``rng``, so a seed reproduces the same anomalies bit for bit.

Their foreign textures come from ``synthetic_sources.TextureSources``; ``synthetic_validation`` turns
held-out normals into the labelled validation set, and the Hydra group ``conf/validation`` holds the
generator choice and options.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage
from skimage.color import hsv2rgb, rgb2gray, rgb2hsv

from anomaly_attn.common.registries import Registry
from anomaly_attn.data.painted_shapes import MAX_SHAPE_PX, MIN_SHAPE_PX, draw_shape, gray_level
from anomaly_attn.data.synthetic_sources import TextureSources

AnomalyGenerator = Callable[..., tuple[np.ndarray, np.ndarray]]
"""``fn(image, rng, sources, **options) -> (anomalous image, mask)``, see the module docstring."""

GENERATORS: Registry[AnomalyGenerator] = Registry("synthetic anomaly generator")

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

    return GENERATORS.register(name)


def list_generators() -> list[str]:
    """Names of the registered generators, sorted."""
    return GENERATORS.names()


def get_generator(name: str) -> AnomalyGenerator:
    """The generator registered as ``name``; a ``ValueError`` naming the closest and all valid names
    otherwise."""
    return GENERATORS.get(name)


def generator_options(name: str) -> list[str]:
    """The options (keyword-only parameters) generator ``name`` accepts."""
    parameters = inspect.signature(get_generator(name)).parameters.values()
    return [parameter.name for parameter in parameters if parameter.kind is inspect.Parameter.KEYWORD_ONLY]


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
    """Fashion-MNIST's gray corruption: one rectangle, ellipse or line (``painted_shapes.draw_shape``,
    3-8 px at 28 px, scaled with the image side), dilated by 1 px and painted with a random gray level
    that differs from the covered pixels by ``painted_shapes.MIN_GRAY_CONTRAST`` on average
    (``painted_shapes.gray_level``)."""
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


SCRATCH_MIN_SIZE = 8


def _scratch_mask(height: int, width: int, rng: np.random.Generator, length_range: Sequence[float],
                  line_width: int, bend: float) -> np.ndarray:
    """A thin line: a quadratic Bézier curve from a random point, ``length_range`` × the shorter side
    long, bent sideways by up to ``bend`` × its length, ``line_width`` px wide."""
    side = min(height, width)
    length = rng.uniform(*length_range) * side
    angle = rng.uniform(0.0, 2.0 * np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)])
    reach = length * direction  # the start is drawn so that the end lies inside the image too
    low = np.maximum(0.0, -reach)
    high = np.maximum(low, np.array([height - 1.0, width - 1.0]) - np.maximum(0.0, reach))
    start = rng.uniform(low, high)
    end = start + reach
    sideways = np.array([-direction[1], direction[0]])
    control = (start + end) / 2.0 + rng.uniform(-bend, bend) * length * sideways
    t = np.linspace(0.0, 1.0, max(2, int(4 * length)))[:, None]
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    rows, cols = np.round(points).astype(int).T
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    mask = np.zeros((height, width), dtype=bool)
    mask[rows[inside], cols[inside]] = True
    if line_width > 1:
        mask = ndimage.binary_dilation(mask, structure=np.ones((line_width, line_width), dtype=bool))
    return mask


@register_generator("scratch")
def scratch(
    image: np.ndarray,
    rng: np.random.Generator,
    sources: TextureSources,
    *,
    width: Sequence[int] = (1, 2),
    length_range: Sequence[float] = (0.3, 0.8),
    bend: float = 0.15,
    polarity: str = "any",
    min_contrast: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """A thin scratch: one straight or slightly bent line ``width`` px wide (1 or 2, NOT scaled with the
    image: thin defects are what smoothing erases), across 30-80 % of the shorter side, painted bright
    (1 − U(0, 0.1)) or dark (U(0, 0.1)) with ``polarity`` ``bright``, ``dark`` or ``any`` (a coin flip;
    the other level where the first is not visible). Its level differs from the covered pixels by at
    least ``min_contrast`` on average. Fashion-MNIST's white lines and cracks are defects of this kind,
    which ``shapes`` (dilated, gray) and ``cutpaste`` (scars of the image's own texture) do not cover."""
    image = _checked_image(image, "scratch", SCRATCH_MIN_SIZE)
    if polarity not in ("any", "bright", "dark"):
        raise ValueError(f"scratch: polarity={polarity!r}; valid: any, bright, dark")
    height, width_px = image.shape[:2]
    low, high = (int(w) for w in width)
    for _ in range(MAX_ATTEMPTS):
        mask = _scratch_mask(height, width_px, rng, length_range, int(rng.integers(low, high + 1)), bend)
        if mask.sum() < MIN_MASK_PIXELS:
            continue
        covered = image[mask]
        first = polarity if polarity != "any" else ("bright", "dark")[int(rng.integers(2))]
        order = [first] if polarity != "any" else [first, "dark" if first == "bright" else "bright"]
        for kind in order:
            level = 1.0 - rng.uniform(0.0, 0.1) if kind == "bright" else rng.uniform(0.0, 0.1)
            if np.abs(covered - level).mean() >= min_contrast:
                anomalous = image.copy()
                anomalous[mask] = level
                return anomalous, mask
    raise ValueError(
        f"scratch: no {polarity} line of {min_contrast} contrast in {MAX_ATTEMPTS} draws on the "
        f"{height}×{width_px} image; lower min_contrast or use polarity=any"
    )
