"""The file format of one decoded-image cache entry, validated on every read.

An entry is one uncompressed ``.npz`` (a zip of ``.npy`` members, readable with ``np.load``) holding
``images.npy`` (``N×H×W×C uint8``), ``masks.npy`` (``M×H×W uint8`` in {0, 1}, only for the records that
have a mask) and ``meta.json`` (the key and the files skipped as corrupt). The members are stored (not
compressed), so they are memory-mapped where they lie (copy-on-write): concurrent jobs on one machine
share the page cache instead of each holding a copy.

Reading validates the zip structure, the stored key, the ``.npy`` headers and shapes, and each member's
CRC-32: a truncated or corrupted entry (a crash before the data reached the disk, a bad copy) raises
instead of being served.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from anomaly_attn.data.cache_key import _canonical

MEMBERS = ("meta.json", "images.npy", "masks.npy")


class CacheEntryError(ValueError):
    """An entry that is not what its name promises (truncated, corrupted, another key)."""


@dataclass
class CachedSplit:
    """A validated entry: images of the records not skipped (in order), masks of those with a mask file,
    and the records skipped as corrupt when it was written (index in the split → error message)."""

    images: np.ndarray
    masks: np.ndarray
    skipped: dict[int, str]


def write_entry(
    handle: IO[bytes],
    meta: Mapping[str, Any],
    image_shape: tuple[int, ...],
    images: Sequence[np.ndarray],
    mask_shape: tuple[int, ...],
    masks: Sequence[np.ndarray],
) -> None:
    """Write an entry to the open binary file ``handle``: ``meta`` as ``meta.json``, then ``images``
    (each ``image_shape[1:]``) and ``masks`` (each ``mask_shape[1:]``) streamed into their ``.npy`` members.

    Raises:
        ValueError: an array is not uint8 or not of its member's shape.
    """
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.writestr("meta.json", json.dumps(meta, sort_keys=True))
        for name, shape, arrays in (
            ("images.npy", image_shape, images),
            ("masks.npy", mask_shape, masks),
        ):
            with archive.open(name, "w", force_zip64=True) as member:
                member.write(_npy_header(shape))
                for array in arrays:
                    if array.dtype != np.uint8 or array.shape != shape[1:]:
                        raise ValueError(
                            f"{name}: got {array.dtype} {array.shape}, expected {shape[1:]}"
                        )
                    member.write(np.ascontiguousarray(array).data)


def read_entry(path: Path, key: Mapping[str, Any]) -> CachedSplit:
    """The entry at ``path``, validated against ``key``.

    Raises:
        CacheEntryError: its members, stored key, ``.npy`` headers, extents, shapes or CRC-32 are not
            what ``key`` promises; a damaged file can also raise ``zipfile.BadZipFile``, ``ValueError``,
            ``KeyError`` or ``struct.error``, and ``OSError`` (``FileNotFoundError``: no entry).
    """
    with open(path, "rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        with zipfile.ZipFile(handle) as archive:
            infos = {info.filename: info for info in archive.infolist()}
            if sorted(infos) != sorted(MEMBERS):
                raise CacheEntryError(f"members {sorted(infos)}, expected {sorted(MEMBERS)}")
            meta = json.loads(archive.read("meta.json"))  # zipfile checks its CRC
            if _canonical(meta.get("key", {})) != _canonical(key):
                raise CacheEntryError("it was written for another key (hash collision or tampering)")
            images = _member_array(path, handle, infos["images.npy"], file_size)
            masks = _member_array(path, handle, infos["masks.npy"], file_size)
    skipped = {int(index): str(message) for index, message in meta.get("skipped", [])}
    files = key["files"]
    kept = [i for i in range(len(files)) if i not in skipped]
    with_mask = [i for i in kept if files[i][3] is not None]
    size, channels = int(key["image_size"]), int(key["channels"])
    if images.shape != (len(kept), size, size, channels):
        expected = (len(kept), size, size, channels)
        raise CacheEntryError(f"images.npy is {images.shape}, expected {expected}")
    if masks.shape != (len(with_mask), size, size):
        raise CacheEntryError(f"masks.npy is {masks.shape}, expected {(len(with_mask), size, size)}")
    return CachedSplit(images=images, masks=masks, skipped=skipped)


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` (version 1.0 or 2.0) header of a C-ordered uint8 array of ``shape``."""
    buffer = io.BytesIO()
    header = {"descr": "|u1", "fortran_order": False, "shape": tuple(int(n) for n in shape)}
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:  # header too long for 1.0 (never at these shapes, but allowed)
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


def _member_array(path: Path, handle: Any, info: zipfile.ZipInfo, file_size: int) -> np.ndarray:
    """Memory-map a stored ``.npy`` member after checking its header, its extent and its CRC-32."""
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        raise CacheEntryError(f"member {info.filename} is compressed")
    handle.seek(info.header_offset)
    local = handle.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise CacheEntryError(f"bad local header of {info.filename}")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    data_start = info.header_offset + 30 + name_length + extra_length
    if data_start + info.file_size > file_size:
        raise CacheEntryError(f"member {info.filename} runs past the end of the file (truncated)")
    handle.seek(data_start)
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        raise CacheEntryError(f"unsupported .npy version {version} in {info.filename}")
    if dtype != np.uint8 or fortran:
        raise CacheEntryError(
            f"member {info.filename} is {dtype}, fortran={fortran}; expected C-ordered uint8"
        )
    header_length = handle.tell() - data_start
    count = int(np.prod(shape, dtype=np.int64))
    if header_length + count != info.file_size:
        raise CacheEntryError(f"member {info.filename} holds {info.file_size} bytes, its header says more")
    handle.seek(data_start)
    crc = zlib.crc32(handle.read(header_length))
    if count == 0:
        array = np.zeros(shape, dtype=np.uint8)
    else:
        array = np.asarray(
            np.memmap(path, dtype=np.uint8, mode="c", offset=data_start + header_length, shape=shape)
        )
        crc = zlib.crc32(array, crc)
    if crc != info.CRC:
        raise CacheEntryError(f"CRC-32 of {info.filename} does not match (corrupted)")
    return array
