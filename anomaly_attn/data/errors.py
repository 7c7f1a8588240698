"""Errors raised while locating, downloading and reading datasets.

Each error names the file or folder at fault and says what to do about it, so a failed run can be fixed
from its message alone.
"""

from __future__ import annotations


class MissingDataError(FileNotFoundError):
    """A dataset root or category folder is not on disk (and was not, or could not be, downloaded)."""


class CorruptImageError(ValueError):
    """An image or mask file exists but cannot be decoded."""


class LayoutError(ValueError):
    """A dataset folder does not follow its expected layout (no images, a mask missing or mis-sized)."""
