"""One writer at a time for shared data folders.

Parallel sweep jobs (the joblib launcher, SLURM arrays on one file system) prepare the same dataset at the
same moment: the Fashion-MNIST and texture generators write a category tree, downloads write an archive.
Staging + rename keeps each tree whole, but without a lock two jobs that both found the tree missing both
generate it, and the second one's replace removed the tree the first was already reading (a sweep lost
jobs to "No such file or directory" and "has no test images"). ``exclusive`` serialises the
check-and-generate step: the first job generates, the others wait, then find the tree current and reuse it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, one job at a time is the user's job
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


@contextmanager
def exclusive(lock_file: str | Path, doing: str) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``lock_file`` for the block; another process (or
    another open of the file) waits until it is released, logging once what it waits for. The lock file
    is created if missing and left in place (removing it would let a third process lock a new file while
    the second still holds the old one). The lock is released when the process dies, so a killed job
    never blocks the next one."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+b") as handle:
        if fcntl is None:
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is %s (lock %s)", doing, lock_file)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
