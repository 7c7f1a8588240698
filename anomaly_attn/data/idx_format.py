"""Reading IDX files, the format of (Fashion-)MNIST's images and labels."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from anomaly_attn.data.errors import CorruptImageError

_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # ndim -> magic number of an unsigned-byte IDX file


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzip-compressed when named ``*.gz``) with ``ndim`` dimensions.

    Kept instead of ``torchvision.datasets.mnist.read_image_file``/``read_label_file``: those read only
    uncompressed files (Debian's ``dataset-fashion-mnist`` and the official mirrors ship ``.gz``) and
    check the header with ``assert`` (an AssertionError without the file's name, and no check at all
    under ``python -O``); this reads the ``.gz`` directly and names the broken file.

    Raises ``CorruptImageError`` naming the file when it is not gzip, has the wrong magic number, or is
    shorter or longer than its header says.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise CorruptImageError(
            f"cannot read IDX file {path}: {error}. Delete it and reinstall/re-download the dataset."
        ) from error
    header_size = 4 + 4 * ndim
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic != _IDX_MAGIC[ndim] or len(data) < header_size:
        found = "nothing" if magic is None else f"0x{magic:08x}"
        raise CorruptImageError(
            f"{path} is not a {ndim}-d unsigned-byte IDX file: magic number {found}, expected "
            f"0x{_IDX_MAGIC[ndim]:08x}. Delete it and reinstall/re-download the dataset."
        )
    shape = tuple(int.from_bytes(data[4 + 4 * axis : 8 + 4 * axis], "big") for axis in range(ndim))
    expected_size = header_size + int(np.prod(shape))
    if len(data) != expected_size:
        raise CorruptImageError(
            f"{path} holds {len(data)} bytes but its header {shape} needs {expected_size}: the file is "
            f"truncated or corrupt. Delete it and reinstall/re-download the dataset."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)
