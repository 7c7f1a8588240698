"""A persistent on-disk cache of decoded, resized images and masks, shared by every job of a sweep.

Every job of a sweep trains on the same category, and decoding and resizing its PNGs (up to 1024² in
MVTec AD) costs far more than a small model's epoch. ``ImageCache`` keeps decoded images for one process;
this store keeps them across processes, sweeps and machines that share the folder (joblib workers, SLURM
array jobs on a shared file system).

**Granularity: one entry per split** (a category's training or test file list) at one image size and
channel count: one uncompressed ``.npz`` of the split's images and masks (``cache_entry.py``, the format).
A split is what a job loads as a whole, so one entry is one file to stat, validate and map; a per-image
entry would cost a few thousand small files per category on a shared file system, a per-dataset one would
be rewritten whenever any category changed. The members are memory-mapped where they lie (copy-on-write):
concurrent jobs on one machine share the page cache instead of each holding a copy.

**Key** (``cache_key.py``): the dataset root, category, split, image size, channels, the decoder's
version and every source file's ``(path, size, mtime_ns)``, so a changed, added or removed file gives
another key. The file name is a hash of the key; the full key is stored in the entry and compared on
every read.

**Concurrency without locks**: an entry is written to a temporary file in the same folder, fsynced and
renamed over its final name (``os.replace``, atomic on POSIX and on NFS), so a reader sees the old entry,
no entry or the whole new one. Two writers of one key write the same bytes; the last rename wins. Every
read still validates the entry (zip structure, stored key, ``.npy`` headers and shapes, and each member's
CRC-32), so a truncated or corrupted entry (a crash before the data reached the disk, a bad copy) is a
miss: the split is decoded again and the entry rewritten. Jobs that start together may each decode the
split once (no lock makes one wait for another); every later job reads it.

**Size limit**: after a write, entries are evicted least recently used first (an entry's mtime is its
last use: a hit touches it) until the folder holds at most ``max_gb``. Any failure of the store itself
(a read-only or full disk) is logged and the job goes on decoding in memory.

Location: ``dataset.cache.dir``, else ``$ANOMALY_ATTN_CACHE_DIR``, else ``$XDG_CACHE_HOME/anomaly_attn``,
else ``~/.cache/anomaly_attn``; entries live in its ``decoded_images/`` subfolder, so clearing never touches
anything else there (``~/.cache/anomaly_attn`` is also the default data folder).
``python -m anomaly_attn cache --info`` / ``--clear`` inspects and empties it.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_attn.common.flags import parse_flag
from anomaly_attn.data.cache_entry import CachedSplit, CacheEntryError, read_entry, write_entry
from anomaly_attn.data.cache_key import ENTRY_SUFFIX, _canonical, entry_name

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "ANOMALY_ATTN_CACHE_DIR"
ENTRIES_SUBDIR = "decoded_images"
TEMP_PREFIX = ".tmp-"
# A temporary file older than this is a writer's leftover (killed mid-write), removed by eviction.
STALE_TEMP_S = 3600.0

STATS: Counter[str] = Counter()
"""Process-wide counters: ``images_decoded`` (source images decoded, by ``ImageCache``), ``hits``,
``misses``, ``writes``, ``evicted``, ``corrupt`` (entries that failed validation)."""


@dataclass(frozen=True)
class CacheSettings:
    """``dataset.cache``: whether the store is used, its size limit and its folder (``None``: from env)."""

    enabled: bool = True
    max_gb: float = 5.0
    dir: str | None = None

    @classmethod
    def from_config(cls, value: Any) -> CacheSettings:
        """Settings from ``dataset.cache`` (a mapping, ``None`` for the defaults, or a bool for ``enabled``).

        Raises:
            ValueError: an unknown key, a non-boolean ``enabled`` or a ``max_gb`` that is not positive,
                naming the key and what it accepts.
        """
        if value is None:
            return cls()
        if isinstance(value, (bool, str)):
            return cls(enabled=parse_flag(value, "dataset.cache.enabled"))
        if not isinstance(value, Mapping):
            raise ValueError(
                f"dataset.cache={value!r} is not a mapping; use dataset.cache.enabled=true|false, "
                "dataset.cache.max_gb=GB, dataset.cache.dir=PATH"
            )
        unknown = sorted(set(value) - {"enabled", "max_gb", "dir"})
        if unknown:
            raise ValueError(
                f"unknown key(s) dataset.cache.{', dataset.cache.'.join(unknown)}; "
                "valid keys: enabled, max_gb, dir"
            )
        enabled = parse_flag(value.get("enabled", True), "dataset.cache.enabled")
        try:
            max_gb = float(value.get("max_gb", cls.max_gb))
        except (TypeError, ValueError):
            raise ValueError(
                f"dataset.cache.max_gb={value.get('max_gb')!r} is not a number; give a size in GB, e.g. 5"
            ) from None
        if not max_gb > 0:
            raise ValueError(
                f"dataset.cache.max_gb must be positive, got {max_gb}; "
                "to turn the cache off use dataset.cache.enabled=false"
            )
        directory = value.get("dir")
        return cls(enabled=enabled, max_gb=max_gb, dir=None if directory in (None, "") else str(directory))

    def store(self) -> DecodedImageStore | None:
        """The store these settings describe, or ``None`` when the cache is off."""
        if not self.enabled:
            return None
        return DecodedImageStore(cache_root(self.dir), max_bytes=int(self.max_gb * 1e9))


def cache_root(directory: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``directory``, ``$ANOMALY_ATTN_CACHE_DIR``, ``$XDG_CACHE_HOME/anomaly_attn`` or
    ``~/.cache/anomaly_attn``, in that order (decoded images go to its ``decoded_images/``)."""
    if directory:
        return Path(directory).expanduser()
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "anomaly_attn"
    return Path.home() / ".cache" / "anomaly_attn"


class DecodedImageStore:
    """The folder of cached splits. See the module docstring for the guarantees and ``cache_entry.py``
    for the format.

    Args:
        root: the cache folder (entries go to ``root/decoded_images``).
        max_bytes: evict least recently used entries beyond this total.
    """

    def __init__(self, root: str | os.PathLike[str], max_bytes: int = int(5e9)) -> None:
        self.root = Path(root)
        self.directory = self.root / ENTRIES_SUBDIR
        self.max_bytes = int(max_bytes)

    def path(self, key: Mapping[str, Any]) -> Path:
        return self.directory / entry_name(key)

    # ---- reading -------------------------------------------------------------------------------------
    def read(self, key: Mapping[str, Any]) -> CachedSplit | None:
        """The validated entry of ``key``, or ``None`` (missing, or invalid: logged and counted)."""
        path = self.path(key)
        try:
            split = read_entry(path, key)
        except FileNotFoundError:
            STATS["misses"] += 1
            return None
        except (OSError, CacheEntryError, zipfile.BadZipFile, ValueError, KeyError, struct.error) as error:
            STATS["misses"] += 1
            STATS["corrupt"] += 1
            log.warning("decoded-image cache entry %s is invalid (%s): decoding again", path, error)
            return None
        STATS["hits"] += 1
        try:
            os.utime(path)  # last use, for least-recently-used eviction
        except OSError:
            pass  # a read-only cache is still a cache
        return split

    # ---- writing -------------------------------------------------------------------------------------
    def write(
        self,
        key: Mapping[str, Any],
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        skipped: Mapping[int, str] | None = None,
    ) -> Path | None:
        """Store a split atomically (temporary file + ``os.replace``) and evict beyond the size limit.

        ``images`` are the ``H×W×C`` arrays of the records not skipped, in order; ``masks`` the ``H×W``
        arrays of those with a mask file. Returns the entry's path, or ``None`` when it was not stored
        (larger than the limit, or the folder is not writable: logged, never raised).
        """
        size, channels = int(key["image_size"]), int(key["channels"])
        image_shape = (len(images), size, size, channels)
        mask_shape = (len(masks), size, size)
        estimate = int(np.prod(image_shape)) + int(np.prod(mask_shape)) + 4096 + len(_canonical(key))
        path = self.path(key)
        if estimate > self.max_bytes:
            log.warning(
                "decoded-image cache: %s needs %.2f GB, more than dataset.cache.max_gb=%.2f; not cached "
                "(raise dataset.cache.max_gb to cache it)", path.name, estimate / 1e9, self.max_bytes / 1e9,
            )
            return None
        meta = {"key": key, "skipped": sorted([int(i), str(m)] for i, m in (skipped or {}).items())}
        temp_name = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            descriptor, temp_name = tempfile.mkstemp(
                dir=self.directory, prefix=TEMP_PREFIX, suffix=ENTRY_SUFFIX
            )
            with os.fdopen(descriptor, "wb") as handle:
                write_entry(handle, meta, image_shape, images, mask_shape, masks)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, path)
            temp_name = None
        except OSError as error:
            log.warning("decoded-image cache: could not write %s (%s); continuing without it", path, error)
            return None
        finally:
            if temp_name is not None:
                try:
                    os.unlink(temp_name)
                except OSError:
                    pass
        STATS["writes"] += 1
        self.evict(keep=path)
        return path

    # ---- size limit, inspection, clearing --------------------------------------------------------
    def entries(self) -> list[os.DirEntry]:
        """Cached splits (not temporary files), least recently used first."""
        try:
            found = [e for e in os.scandir(self.directory) if e.name.endswith(ENTRY_SUFFIX)
                     and not e.name.startswith(TEMP_PREFIX) and e.is_file()]
        except FileNotFoundError:
            return []
        stats = {}
        for entry in found:
            try:
                stats[entry.name] = entry.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
        kept = [entry for entry in found if entry.name in stats]
        return sorted(kept, key=lambda entry: (stats[entry.name].st_mtime_ns, entry.name))

    def evict(self, keep: Path | None = None) -> list[str]:
        """Delete least recently used entries until the total is at most ``max_bytes`` (never ``keep``),
        and temporary files older than an hour (left by killed writers). Returns the deleted names."""
        removed = []
        now = time.time()
        try:
            for item in os.scandir(self.directory):
                if item.name.startswith(TEMP_PREFIX) and now - item.stat().st_mtime > STALE_TEMP_S:
                    self._unlink(Path(item.path))
        except FileNotFoundError:
            return removed
        entries = self.entries()
        sizes = {}
        for entry in entries:
            try:
                sizes[entry.name] = entry.stat().st_size
            except FileNotFoundError:
                continue
        total = sum(sizes.values())
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry.name not in sizes or (keep is not None and entry.name == keep.name):
                continue
            if self._unlink(Path(entry.path)):
                removed.append(entry.name)
                STATS["evicted"] += 1
            total -= sizes[entry.name]  # gone, whoever removed it
        if removed:
            log.info("decoded-image cache: evicted %d least recently used entries (max_gb=%.2f)",
                     len(removed), self.max_bytes / 1e9)
        return removed

    @staticmethod
    def _unlink(path: Path) -> bool:
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as error:
            log.warning("decoded-image cache: could not remove %s (%s)", path, error)
            return False

    def info(self) -> dict[str, Any]:
        """The folder, the limit, and every entry's name, size and last use (least recent first)."""
        rows = []
        for entry in self.entries():
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            rows.append({"name": entry.name, "bytes": stat.st_size, "last_used": stat.st_mtime})
        return {
            "directory": str(self.directory),
            "max_bytes": self.max_bytes,
            "total_bytes": sum(row["bytes"] for row in rows),
            "entries": rows,
        }

    def clear(self) -> tuple[int, int]:
        """Delete every entry and temporary file of the store (nothing else in the folder).
        Returns (files removed, bytes freed)."""
        count, freed = 0, 0
        try:
            items = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0, 0
        for item in items:
            if not item.name.endswith(ENTRY_SUFFIX) or not item.is_file():
                continue
            try:
                size = item.stat().st_size
            except FileNotFoundError:
                continue
            if self._unlink(Path(item.path)):
                count, freed = count + 1, freed + size
        return count, freed
