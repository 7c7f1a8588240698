"""The key of a decoded-image cache entry, and the entry's file name derived from it.

**Key**: the dataset root, category, split, image size, channels, the decoder's version (Pillow's,
``DECODER_VERSION``: bit depths, orientation, resampling filters; the mask threshold) and every source
file's ``(path, size, mtime_ns)`` (images and masks), so a changed, added or removed file gives another
key. The file name is a hash of the key; the full key is stored in the entry and compared on every read
(``cache_entry.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
# Changes whenever decoding changes what is stored (bit depths, orientation, resampling, mask
# binarisation): old entries then miss. v2: v1 entries hold 16-bit images clipped at 255 (mostly white).
DECODER_VERSION = (
    "v2: rgb|l, exif orientation, high-bit gray scaled to 8 bits, bilinear image, mask > threshold, nearest"
)
ENTRY_SUFFIX = ".npz"
# The mask threshold of records that carry none: ``dataset.MASK_THRESHOLD`` (a test keeps them equal;
# repeated here because dataset.py imports this module).
MASK_THRESHOLD = 127


def _file_stat(path: Path) -> list[Any]:
    stat = os.stat(path)
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _pillow_version() -> str:
    import PIL

    return PIL.__version__


def make_key(
    records: Sequence[Any], origin: Mapping[str, str], image_size: int, channels: int
) -> dict[str, Any]:
    """The key of a split: where it comes from, the output size, the decoder and every source file's
    ``(path, size, mtime_ns)`` (image, then mask or nothing) with the mask's binarisation threshold (a
    record's ``mask_threshold`` where records carry one, else ``MASK_THRESHOLD``), in the records' order.

    Raises:
        OSError: a file cannot be stat'ed (it vanished); the caller decodes without the store.
    """
    files = []
    for record in records:
        if record.mask_path is None:
            files.append([*_file_stat(record.path), None, None, None, None])
        else:
            threshold = int(getattr(record, "mask_threshold", MASK_THRESHOLD))
            files.append([*_file_stat(record.path), *_file_stat(record.mask_path), threshold])
    return {
        "format": FORMAT_VERSION,
        "decoder": DECODER_VERSION,
        "pillow": _pillow_version(),
        "root": str(origin.get("root", "")),
        "category": str(origin.get("category", "")),
        "split": str(origin.get("split", "")),
        "image_size": int(image_size),
        "channels": int(channels),
        "files": files,
    }


def _canonical(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def entry_name(key: Mapping[str, Any]) -> str:
    """``CATEGORY-SPLIT-SIZEpx-Cc-HASH.npz``: readable in ``--info``, unique by the key's hash."""
    digest = hashlib.sha256(_canonical(key).encode()).hexdigest()[:32]
    label = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{key['category']}-{key['split']}")[:48]
    return f"{label}-{key['image_size']}px-{key['channels']}c-{digest}{ENTRY_SUFFIX}"
