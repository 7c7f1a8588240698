"""The torch ``Dataset`` of one split and the in-memory cache of decoded, resized images.

Decoding a 1024² PNG costs far more than a training step of a small model, so every file is decoded and
resized once per process (``ImageCache``) and kept as ``uint8``; epochs after the first only copy arrays.
With a ``DecodedImageStore`` (``disk_cache.py``, ``dataset.cache``) a whole split is decoded once per
machine or shared folder: the next job, sweep or process maps the stored arrays instead of decoding.
Masks are binarized with ``> record.mask_threshold`` on the 0-255 scale (127 unless the dataset says
otherwise; never ``== 1``, which misses masks saved as 255; VisA's 1..N masks use 0) and
resized with nearest neighbour; images are resized with antialiased bilinear filtering. ``open_image``
reads every supported bit depth as it is: 16-bit and other high-bit gray is scaled, not clipped, to 8 bits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from anomaly_attn.data.cache_key import make_key
from anomaly_attn.data.disk_cache import STATS, DecodedImageStore
from anomaly_attn.data.errors import CorruptImageError, LayoutError
from anomaly_attn.data.layout import DEFAULT_MASK_THRESHOLD, Record

log = logging.getLogger(__name__)

MASK_THRESHOLD = DEFAULT_MASK_THRESHOLD
"""Mask pixels above this (0-255 scale) are anomalous, unless a record carries its own threshold."""


EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
"""PIL modes that PIL itself converts to "RGB" and "L"; it drops alpha, keeping the stored colour (not
composited), which is what an 8-bit RGBA image has always been read as here."""
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
SUPPORTED_MODES = (
    "1-bit; 8-bit gray, gray+alpha, palette, RGB, RGBA, CMYK, YCbCr (PIL 1 L LA P PA RGB RGBA RGBX CMYK "
    "YCbCr); 16-bit gray (I;16 I;16L I;16B I;16N); 32-bit integer gray (I) with values in [0, 65535]; "
    "float gray (F) with values in [0, 1]"
)


def open_image(path: Path, mode: str) -> Image.Image:
    """Decode ``path`` fully, apply its EXIF orientation and convert it to 8-bit PIL ``mode`` ("RGB"/"L").

    8-bit files then go through PIL's ``convert`` as before (alpha dropped, not composited). High-bit
    gray is scaled to [0, 1] (16-bit and ``I`` ÷ 65535, ``F`` as is) and rounded to 8 bits, so ``v·257``
    decodes exactly as the 8-bit ``v``; PIL's own ``convert`` would clip everything above 255 to white.
    PIL reads 16-bit colour PNG/TIFF at 8 bits itself (the high byte: within 1/255 of rounding).

    Raises:
        CorruptImageError: the file cannot be decoded (truncated, not an image, a mode in none of
            ``SUPPORTED_MODES``, values outside the range of its mode), naming it.
    """
    try:
        with Image.open(path) as image:
            ImageOps.exif_transpose(image, in_place=True)
            return _eight_bit(image, path).convert(mode)
    except CorruptImageError:
        raise  # already names the file, its mode and what is supported
    except (OSError, ValueError, SyntaxError) as error:
        raise CorruptImageError(f"cannot decode image {path}: {error}") from error


def _eight_bit(image: Image.Image, path: Path) -> Image.Image:
    """``image`` itself in an 8-bit mode, else its gray values in [0, 1] rounded to an 8-bit "L" image."""
    if image.mode in EIGHT_BIT_MODES:
        return image
    return Image.fromarray(np.round(_unit_gray(image, path) * 255).astype(np.uint8))


def _unit_gray(image: Image.Image, path: Path) -> np.ndarray:
    """The gray values of a high-bit ``image`` in [0, 1] (float64: exact rounding of every 16-bit value)."""
    if image.mode in SIXTEEN_BIT_MODES:
        return np.asarray(image, dtype=np.float64) / 65535
    if image.mode == "I":
        return _within(np.asarray(image), 0, 65535, image.mode, path).astype(np.float64) / 65535
    if image.mode == "F":
        return _within(np.asarray(image), 0.0, 1.0, image.mode, path).astype(np.float64)
    raise CorruptImageError(
        f"cannot decode image {path}: PIL mode {image.mode!r} is not supported; supported: {SUPPORTED_MODES}"
    )


def _within(values: np.ndarray, low: float, high: float, mode: str, path: Path) -> np.ndarray:
    """``values`` when all lie in [``low``, ``high``] (NaN does not), else an error naming the range found."""
    if np.all((values >= low) & (values <= high)):
        return values
    found = f"[{np.nanmin(values)}, {np.nanmax(values)}]" + (" and NaN" if np.isnan(values).any() else "")
    raise CorruptImageError(
        f"cannot decode image {path}: PIL mode {mode!r} holds values in {found}, outside [{low}, {high}] "
        f"(its scale is unknown); supported: {SUPPORTED_MODES}"
    )


class ImageCache:
    """Decoded and resized images (``H×W×C uint8``) and masks (``H×W uint8`` in {0, 1}) by file path.

    Args:
        image_size: side of the square output.
        channels: 3 (RGB) or 1 (grayscale).
        store: the persistent cache of decoded splits (``None``: this process only).
    """

    def __init__(self, image_size: int, channels: int, store: DecodedImageStore | None = None) -> None:
        self.image_size = image_size
        self.channels = channels
        self.store = store
        self._images: dict[Path, np.ndarray] = {}
        self._masks: dict[Path, np.ndarray] = {}

    def _decode(self, record: Record) -> None:
        """Decode, check and resize the image and mask of ``record`` into the cache."""
        image = open_image(record.path, "RGB" if self.channels == 3 else "L")
        STATS["images_decoded"] += 1
        size = (self.image_size, self.image_size)
        if record.mask_path is not None:
            mask = open_image(record.mask_path, "L")
            if mask.size != image.size:
                raise LayoutError(
                    f"mask {record.mask_path} is {mask.size[0]}×{mask.size[1]} but its image "
                    f"{record.path} is {image.size[0]}×{image.size[1]}; a mask must have its image's size"
                )
            binary = (np.asarray(mask) > record.mask_threshold).astype(np.uint8)
            resized_mask = Image.fromarray(binary).resize(size, Image.Resampling.NEAREST)
            self._masks[record.mask_path] = np.array(resized_mask, dtype=np.uint8)
        pixels = np.array(image.resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)
        self._images[record.path] = pixels.reshape(self.image_size, self.image_size, self.channels)

    def load(
        self,
        records: Sequence[Record],
        skip_corrupt: bool = False,
        origin: dict[str, str] | None = None,
    ) -> list[Record]:
        """Decode every record not yet cached; return the records that decoded.

        With ``skip_corrupt`` an undecodable image or mask is skipped with a warning; otherwise its
        ``CorruptImageError`` propagates. A mask of the wrong size is always an error (``LayoutError``).
        With a ``store`` and an ``origin`` (``root``, ``category``, ``split``: part of the key) the
        records are read from the store when it holds them, and stored after decoding otherwise.
        """
        pending = [record for record in records if record.path not in self._images]
        if pending and self.store is not None and origin is not None:
            skipped = self._load_through_store(pending, skip_corrupt, origin)
        else:
            skipped = self._decode_all(pending, skip_corrupt)
        return [record for record in records if record.path not in skipped]

    def _decode_all(self, records: Sequence[Record], skip_corrupt: bool) -> dict[Path, str]:
        """Decode ``records``; the ones skipped as corrupt (path -> error message)."""
        skipped: dict[Path, str] = {}
        for record in records:
            try:
                self._decode(record)
            except CorruptImageError as error:
                if not skip_corrupt:
                    raise CorruptImageError(
                        f"{error}. Replace or delete the file, or skip undecodable files with "
                        "dataset.skip_corrupt=true"
                    ) from error
                log.warning("skipping %s (skip_corrupt=true): %s", record.path, error)
                skipped[record.path] = str(error)
        return skipped

    def _load_through_store(
        self, records: Sequence[Record], skip_corrupt: bool, origin: dict[str, str]
    ) -> dict[Path, str]:
        """``_decode_all`` with the store in front: a valid entry replaces decoding, a miss is stored."""
        assert self.store is not None
        try:
            key = make_key(records, origin, self.image_size, self.channels)
        except OSError:  # a file vanished: decoding names it
            return self._decode_all(records, skip_corrupt)
        cached = self.store.read(key)
        if cached is not None and (skip_corrupt or not cached.skipped):
            kept = [record for index, record in enumerate(records) if index not in cached.skipped]
            with_mask = [record for record in kept if record.mask_path is not None]
            for record, pixels in zip(kept, cached.images, strict=True):
                self._images[record.path] = pixels
            for record, mask in zip(with_mask, cached.masks, strict=True):
                self._masks[record.mask_path] = mask
            for index, message in cached.skipped.items():
                log.warning(
                    "skipping %s (skip_corrupt=true, as when cached): %s", records[index].path, message
                )
            return {records[index].path: message for index, message in cached.skipped.items()}
        skipped = self._decode_all(records, skip_corrupt)
        try:
            unchanged = make_key(records, origin, self.image_size, self.channels) == key
        except OSError:
            unchanged = False
        if not unchanged:
            log.warning("decoded-image cache: files of %s changed while being decoded; not cached", origin)
            return skipped
        kept = [record for record in records if record.path not in skipped]
        self.store.write(
            key,
            images=[self._images[record.path] for record in kept],
            masks=[self._masks[record.mask_path] for record in kept if record.mask_path is not None],
            skipped={
                index: skipped[record.path] for index, record in enumerate(records) if record.path in skipped
            },
        )
        return skipped

    def image(self, record: Record) -> np.ndarray:
        """The ``H×W×C uint8`` image of ``record`` (decoded now if not cached)."""
        if record.path not in self._images:
            self._decode(record)
        return self._images[record.path]

    def mask(self, record: Record) -> np.ndarray:
        """The ``H×W uint8`` {0, 1} mask of ``record``; zeros where it has none."""
        if record.mask_path is None:
            return np.zeros((self.image_size, self.image_size), dtype=np.uint8)
        if record.mask_path not in self._masks:
            self._decode(record)
        return self._masks[record.mask_path]


def to_image_tensor(pixels: np.ndarray) -> torch.Tensor:
    """``H×W×C uint8`` -> ``C×H×W float32`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(255.0)


class AnomalyImageDataset(Dataset):
    """Samples of one split as dicts (see docs/ARCHITECTURE.md), read through a shared ``ImageCache``.

    Args:
        records: the split's images.
        cache: decoded images; shared by the splits of a category so each file is decoded once.
        transform: albumentations pipeline applied to image and mask together (``None``: none).
    """

    def __init__(
        self,
        records: Sequence[Record],
        cache: ImageCache,
        transform: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        self.records = list(records)
        self.cache = cache
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        pixels = self.cache.image(record)
        mask = self.cache.mask(record)
        if self.transform is not None:
            transformed = self.transform(image=pixels, mask=mask)
            pixels, mask = transformed["image"], transformed["mask"]
        sample = {
            "image": to_image_tensor(pixels),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).float().unsqueeze(0),
            "label": torch.tensor(record.label, dtype=torch.int64),
            "path": str(record.path),
            "defect_type": record.defect_type,
            "has_mask": record.label == 0 or record.mask_path is not None,
        }
        if record.defect_probability is not None:  # ELPV: the annotators' probability, for the scores csv
            sample["defect_probability"] = float(record.defect_probability)
        return sample

    def images_tensor(self) -> torch.Tensor:
        """All images of the split, not augmented, as one ``N×C×H×W float32`` tensor in [0, 1]."""
        if not self.records:
            raise ValueError("the split is empty: no images to stack")
        return torch.stack([to_image_tensor(self.cache.image(record)) for record in self.records])
