"""Embedded offline dataset: crops of scikit-image's brick, grass and gravel textures with synthetic defects.

It needs no download, so ``make run`` and every test work offline. For each category the generator takes
normal training crops from one region of the 512×512 grayscale source image and test crops from a
disjoint region (the test texture is never seen in training), then paints one synthetic defect on each
anomalous test crop, modelled on MVTec AD's texture defects:

- ``scratch``: a thin smooth curve, darker or brighter than the surface;
- ``crack``: a thin jagged dark line with a side branch;
- ``glue``: a bright translucent strand (foreign material);
- ``hole``: a dark irregular blob with a raised bright rim;
- ``stain``: an irregular region whose intensity is shifted and whose texture contrast is flattened
  (MVTec's ``color``/``glue`` spots), strong enough to see at a glance.

Every type covers a comparable area (about 3-5 % of the image), so no type dominates the defect pixels of
the pixel AUROC. Crops of ``crop_size`` are upsampled to ``image_size`` before the defects are drawn
(small crops upsampled reconstruct better with small models than native crops, see docs/METHOD.md,
"Datasets").

The result is written once into ``root`` in the MVTec AD layout (``brick/train/good/000.png``,
``brick/test/scratch/000.png``, ``brick/ground_truth/scratch/000_mask.png``) together with a
``manifest.json`` of the generator version and parameters; a category whose manifest differs is
regenerated, so a changed parameter never reuses stale files. Generation is seeded and deterministic
(same parameters -> identical bytes) and takes well under a second per category.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import skimage
import skimage.data
from PIL import Image
from scipy import ndimage
from skimage.draw import line as draw_line

from anomaly_attn.common.locks import exclusive
from anomaly_attn.data.errors import LayoutError
from anomaly_attn.data.layout import CategoryLayout, LayoutDataset
from anomaly_attn.data.transforms import TEXTURE_FLIPS

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""Bump when the generated images change for the same parameters (forces regeneration of caches)."""

TEXTURE_CATEGORIES: tuple[str, ...] = ("brick", "grass", "gravel")
DEFECT_TYPES: tuple[str, ...] = ("scratch", "crack", "glue", "hole", "stain")
MANIFEST_NAME = "manifest.json"
SOURCE_WIDTH = 512
"""Width of the scikit-image source textures (checked against ``train_fraction`` at construction)."""


@dataclass(frozen=True)
class TextureParams:
    """Everything that determines the generated files of one category (written to the manifest)."""

    crop_size: int
    image_size: int
    n_train: int
    n_test_good: int
    n_test_per_defect: int
    generator_seed: int
    train_fraction: float


def source_texture(category: str) -> np.ndarray:
    """The 512×512 grayscale source texture of ``category`` as float in [0, 1]."""
    pixels = getattr(skimage.data, category)()
    return pixels.astype(np.float32) / 255.0


# --- defect painters -------------------------------------------------------------------------------------
# Each takes a float image in [0, 1] (H×W) and a generator and returns (defective image, boolean mask).
# Lengths are given as fractions of the image side so the defects scale with image_size.


def _stroke_alpha(shape: tuple[int, int], points: np.ndarray, width: float) -> np.ndarray:
    """Antialiased coverage in [0, 1] of a polyline (rows, cols) drawn with ``width`` pixels."""
    skeleton = np.zeros(shape, dtype=bool)
    vertices = np.round(points).astype(int)
    for (r0, c0), (r1, c1) in zip(vertices[:-1], vertices[1:], strict=True):
        rows, cols = draw_line(r0, c0, r1, c1)
        inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
        skeleton[rows[inside], cols[inside]] = True
    distance = ndimage.distance_transform_edt(~skeleton)
    return np.clip(width / 2 + 0.5 - distance, 0.0, 1.0)


def _blob_depth(
    shape: tuple[int, int], center: np.ndarray, radius: float, rng: np.random.Generator
) -> np.ndarray:
    """Signed distance (pixels, positive inside) to the edge of an irregular blob: a circle whose radius
    wobbles with the angle. ``clip(depth + 0.5, 0, 1)`` is its antialiased coverage."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    d_row, d_col = rows - center[0], cols - center[1]
    angle = np.arctan2(d_row, d_col)
    wobble = sum(
        rng.uniform(0.05, 0.15) * np.cos(harmonic * angle + rng.uniform(0, 2 * np.pi))
        for harmonic in (2, 3, 5)
    )
    return radius * (1.0 + wobble) - np.hypot(d_row, d_col)


def _random_point(size: int, margin: float, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(margin * size, (1 - margin) * size, size=2)


def _curve_endpoints(size: int, length: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two points ``length · size`` apart, centred somewhere in the middle of the image."""
    center = _random_point(size, 0.35, rng)
    direction = rng.uniform(0, 2 * np.pi)
    half = 0.5 * length * size * np.array([np.sin(direction), np.cos(direction)])
    return center - half, center + half


def _paint_scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    start, end = _curve_endpoints(size, rng.uniform(0.55, 0.7), rng)
    normal = np.array([end[1] - start[1], start[0] - end[0]]) / np.linalg.norm(end - start)
    control = (start + end) / 2 + normal * rng.uniform(-0.15, 0.15) * size
    t = np.linspace(0, 1, 64)[:, None]
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    alpha = _stroke_alpha(image.shape, points, width=size / 28) * 0.9
    tone = 0.97 if rng.random() < 0.5 else 0.03
    return image * (1 - alpha) + tone * alpha, alpha > 0.3


def _jagged_line(start: np.ndarray, end: np.ndarray, step: float, rng: np.random.Generator) -> np.ndarray:
    """Points from ``start`` to ``end`` in steps of about ``step`` pixels, each displaced sideways at random:
    a line that keeps its course but zigzags like a crack."""
    count = max(3, round(np.linalg.norm(end - start) / step) + 1)
    normal = np.array([end[1] - start[1], start[0] - end[0]]) / np.linalg.norm(end - start)
    offsets = rng.normal(0, 0.45 * step, size=count)
    offsets[[0, -1]] = 0.0
    t = np.linspace(0, 1, count)[:, None]
    return start + (end - start) * t + normal * offsets[:, None]


def _paint_crack(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    start, end = _curve_endpoints(size, rng.uniform(0.55, 0.7), rng)
    trunk = _jagged_line(start, end, size / 20, rng)
    fork = trunk[len(trunk) // 2]
    course = np.arctan2(*(end - start)) + rng.choice([-1, 1]) * rng.uniform(0.6, 1.0)
    branch_end = np.clip(fork + 0.2 * size * np.array([np.sin(course), np.cos(course)]), 0, size - 1)
    branch = _jagged_line(fork, branch_end, size / 24, rng)
    alpha = np.maximum(
        _stroke_alpha(image.shape, trunk, width=size / 28),
        _stroke_alpha(image.shape, branch, width=size / 40),
    )
    return image * (1 - alpha) + 0.02 * alpha, alpha > 0.3


def _paint_glue(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    start, end = _curve_endpoints(size, rng.uniform(0.5, 0.6), rng)
    normal = np.array([end[1] - start[1], start[0] - end[0]]) / np.linalg.norm(end - start)
    t = np.linspace(0, 1, 64)[:, None]
    wiggle = 0.06 * size * np.sin(2 * np.pi * rng.uniform(1.0, 2.0) * t + rng.uniform(0, 2 * np.pi))
    points = start + (end - start) * t + normal * wiggle
    coverage = ndimage.gaussian_filter(_stroke_alpha(image.shape, points, width=size / 18), 0.6)
    alpha = 0.85 * coverage / coverage.max()
    # A glossy strand: brightest along its middle, letting a little texture through at its edges.
    strand = 0.85 + 0.12 * coverage
    return image * (1 - alpha) + strand * alpha, alpha > 0.3


def _paint_hole(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    center = _random_point(size, 0.25, rng)
    radius = rng.uniform(0.085, 0.1) * size
    depth = _blob_depth(image.shape, center, radius, rng)
    inside = np.clip(depth + 0.5, 0.0, 1.0)
    rim = np.clip(depth + size / 40 + 0.5, 0.0, 1.0) - inside
    hole = 0.03 + 0.1 * image  # a dark pit that keeps a faint trace of the surface
    painted = image * (1 - inside) + hole * inside
    painted = np.clip(painted + 0.3 * rim, 0.0, 1.0)
    return painted, (inside > 0.5) | (rim > 0.5)


def _paint_stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    center = _random_point(size, 0.25, rng)
    inside = np.clip(_blob_depth(image.shape, center, rng.uniform(0.105, 0.12) * size, rng) + 0.5, 0.0, 1.0)
    soft = ndimage.gaussian_filter(inside, size / 96)
    region_mean = float(image[inside > 0.5].mean())
    # Shift the intensity by 0.4 of the range (away from the nearer end) and flatten the texture contrast.
    shift = -0.4 if region_mean > 0.5 else 0.4
    stained = region_mean + shift + 0.35 * (image - region_mean)
    return np.clip(image * (1 - soft) + stained * soft, 0.0, 1.0), inside > 0.5


DEFECT_PAINTERS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _paint_scratch,
    "crack": _paint_crack,
    "glue": _paint_glue,
    "hole": _paint_hole,
    "stain": _paint_stain,
}


# --- generation ------------------------------------------------------------------------------------------


def region_columns(width: int, params: TextureParams) -> tuple[tuple[int, int], tuple[int, int]]:
    """Disjoint column ranges ``[start, stop)`` of the source used for training and for test crops."""
    split = round(width * params.train_fraction)
    if split < params.crop_size or width - split < params.crop_size:
        raise ValueError(
            f"train_fraction={params.train_fraction} leaves a source region narrower than "
            f"crop_size={params.crop_size}"
        )
    return (0, split), (split, width)


def _random_generators(category: str, params: TextureParams) -> tuple[np.random.Generator, ...]:
    """Independent seeded streams for training crops, test crops and defects of ``category``."""
    streams = np.random.SeedSequence([params.generator_seed, TEXTURE_CATEGORIES.index(category)]).spawn(3)
    return tuple(np.random.default_rng(stream) for stream in streams)


def crop_origins(
    category: str, params: TextureParams, source_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners ``(row, col)`` of the training crops and of the test crops (normal ones first,
    then the defective ones in ``DEFECT_TYPES`` order), each crop inside its own column region."""
    train_columns, test_columns = region_columns(source_shape[1], params)
    train_rng, test_rng, _ = _random_generators(category, params)
    n_test = params.n_test_good + params.n_test_per_defect * len(DEFECT_TYPES)

    def origins(columns: tuple[int, int], count: int, rng: np.random.Generator) -> np.ndarray:
        rows = rng.integers(0, source_shape[0] - params.crop_size + 1, size=count)
        cols = rng.integers(columns[0], columns[1] - params.crop_size + 1, size=count)
        return np.stack([rows, cols], axis=1)

    return origins(train_columns, params.n_train, train_rng), origins(test_columns, n_test, test_rng)


def crop_at(source: np.ndarray, origin: np.ndarray, params: TextureParams) -> np.ndarray:
    """The crop at ``origin``, upsampled (bilinear) to ``image_size``."""
    row, col = origin
    patch = Image.fromarray(source[row : row + params.crop_size, col : col + params.crop_size])
    resized = patch.resize((params.image_size, params.image_size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _save_png(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)).save(path)


def _manifest(category: str, params: TextureParams) -> dict[str, Any]:
    return {
        "generator": "anomaly_attn.data.textures",
        "generator_version": GENERATOR_VERSION,
        "source": f"skimage.data.{category} (scikit-image {skimage.__version__})",
        "defect_types": list(DEFECT_TYPES),
        "params": asdict(params),
    }


def generate_category(category: str, params: TextureParams, out_dir: Path) -> None:
    """Write the MVTec-layout tree of one texture category into ``out_dir`` (manifest written last)."""
    source = source_texture(category)
    train_origins, test_origins = crop_origins(category, params, source.shape)
    *_, defect_rng = _random_generators(category, params)
    digits = max(3, len(str(max(params.n_train, params.n_test_good, params.n_test_per_defect) - 1)))

    for index, origin in enumerate(train_origins):
        _save_png(crop_at(source, origin, params), out_dir / "train" / "good" / f"{index:0{digits}d}.png")
    for index, origin in enumerate(test_origins[: params.n_test_good]):
        _save_png(crop_at(source, origin, params), out_dir / "test" / "good" / f"{index:0{digits}d}.png")
    defective_origins = iter(test_origins[params.n_test_good :])
    for defect_type in DEFECT_TYPES:
        for index in range(params.n_test_per_defect):
            crop = crop_at(source, next(defective_origins), params)
            painted, mask = DEFECT_PAINTERS[defect_type](crop, defect_rng)
            name = f"{index:0{digits}d}"
            _save_png(painted, out_dir / "test" / defect_type / f"{name}.png")
            _save_png(mask.astype(np.float32), out_dir / "ground_truth" / defect_type / f"{name}_mask.png")
    (out_dir / MANIFEST_NAME).write_text(json.dumps(_manifest(category, params), indent=2, sort_keys=True))


def _read_manifest(category_dir: Path) -> Mapping[str, Any] | None:
    try:
        return json.loads((category_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


class Textures(LayoutDataset):
    """Brick, grass and gravel crops with synthetic defects, generated into ``root`` on first use.

    Args:
        root: cache folder for the generated images (one subfolder per category).
        image_size: side of the written (and loaded) images.
        crop_size: side of the crops taken from the 512×512 source before upsampling to ``image_size``.
        n_train: normal training crops per category (validation is split off these).
        n_test_good: normal test crops per category.
        n_test_per_defect: anomalous test crops per defect type and category.
        generator_seed: seed of crops and defects (the datamodule's seed only drives splits and shuffling).
        train_fraction: fraction of the source width (from the left) that training crops come from; test
            crops come from the rest.
        channels: 1 by default (the sources are grayscale); 3 replicates the gray level.
        **loader_options: ``batch_size``, ``num_workers``, ``val_fraction``, ``augment``, ``skip_corrupt``
            (see ``LayoutDataset``); ``download``/``url``/``sha256`` are accepted for a uniform config but
            unused, the data being generated.
    """

    def __init__(
        self,
        root: str | Path = "~/.cache/anomaly_attn/textures",
        image_size: int = 64,
        crop_size: int = 32,
        n_train: int = 300,
        n_test_good: int = 10,
        n_test_per_defect: int = 6,
        generator_seed: int = 0,
        train_fraction: float = 0.6,
        channels: int = 1,
        **loader_options: Any,
    ) -> None:
        super().__init__(root, image_size=image_size, channels=channels, **loader_options)
        if crop_size < 2:
            raise ValueError(f"crop_size must be at least 2, got {crop_size}")
        if min(n_train, n_test_good, n_test_per_defect) < 1:
            raise ValueError("n_train, n_test_good and n_test_per_defect must all be at least 1")
        self.params = TextureParams(
            crop_size=int(crop_size),
            image_size=int(image_size),
            n_train=int(n_train),
            n_test_good=int(n_test_good),
            n_test_per_defect=int(n_test_per_defect),
            generator_seed=int(generator_seed),
            train_fraction=float(train_fraction),
        )
        region_columns(SOURCE_WIDTH, self.params)

    def categories(self) -> list[str]:
        """``brick``, ``grass``, ``gravel``."""
        return list(TEXTURE_CATEGORIES)

    def prepare(self, category: str) -> CategoryLayout:
        """Generate ``category`` into ``root`` unless an up-to-date copy is there; return its layout.

        Generation writes into a private temporary folder that is renamed into place, so concurrent runs
        (a parallel sweep) never see half-written categories.

        Raises:
            LayoutError: ``root/category`` exists but was not written by this generator (no manifest);
                it is left untouched.
        """
        self.check_category(category)
        category_dir = self.root / category
        expected = _manifest(category, self.params)
        if self._is_current(category_dir, expected):
            return self.layout_for(category, category_dir)
        # One generator at a time (common.locks): a parallel job that waited finds the copy current.
        with exclusive(self.root / f".{category}.lock", f"generating the {category} texture"):
            if not self._is_current(category_dir, expected):
                self._generate(category, category_dir)
        return self.layout_for(category, category_dir)

    @staticmethod
    def _is_current(category_dir: Path, expected: dict[str, Any]) -> bool:
        """Whether ``category_dir`` holds this generator's output for ``expected``; raises for a folder
        the generator did not write (before any lock file is created next to it)."""
        if not category_dir.exists():
            return False
        found = _read_manifest(category_dir)
        if found is None or found.get("generator") != expected["generator"]:
            raise LayoutError(
                f"{category_dir} exists but holds no {MANIFEST_NAME} of the textures generator; "
                f"move it away or set dataset.root to another folder (it is never overwritten)"
            )
        return found == expected

    def _generate(self, category: str, category_dir: Path) -> None:
        staging = Path(tempfile.mkdtemp(prefix=f".{category}-", dir=self.root))
        try:
            generate_category(category, self.params, staging)
            if category_dir.exists():
                log.info("regenerating %s: its parameters changed", category_dir)
                shutil.rmtree(category_dir)
            os.rename(staging, category_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def layout_for(self, category: str, category_dir: Path) -> CategoryLayout:
        """MVTec naming: ``good`` normals, ``_mask`` PNG masks, masks required."""
        return CategoryLayout(root=category_dir, category=category)

    def default_augmentation(self, category: str) -> Mapping[str, Any]:
        """Horizontal and vertical flips (a mirrored texture is still a normal texture)."""
        return TEXTURE_FLIPS
