"""Foreign textures for the synthetic anomaly generators (``anomaly_attn.data.synthetic``).

``TextureSources`` draws the texture a ``perlin`` anomaly is filled with, from the kinds in
``SOURCE_KINDS``: another normal training image (varied: flipped, rotated, inverted, gamma/contrast
jittered), a crop of a scikit-image sample image shipped with scikit-image (no download), or the image
itself darkened or brightened. Everything is drawn from the caller's ``rng``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import numpy as np
import skimage.data
from skimage.color import rgb2gray
from skimage.transform import resize

log = logging.getLogger(__name__)

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
