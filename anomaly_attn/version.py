"""The package version and where the running code came from, for every run's records.

``__version__`` is the installed distribution's (wheel or editable install); a source tree that was
never installed (``PYTHONPATH=clone``) reports ``0+unknown``. :func:`provenance` adds the git commit
of that source tree, so a metrics.json says exactly which code produced it.
"""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "anomaly_attn"
UNKNOWN_VERSION = "0+unknown"
PACKAGE_DIR = Path(__file__).resolve().parent


def installed_version(distribution: str = DISTRIBUTION) -> str:
    """The installed version of ``distribution``, or ``0+unknown`` (a valid PEP 440 version) when it
    is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


__version__ = installed_version()


def _git(package_dir: Path, *args: str) -> str | None:
    """``git ARGS`` run in ``package_dir``: its stripped output, or None when git is missing or fails."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=package_dir, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_revision(package_dir: Path = PACKAGE_DIR) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout whose top level holds ``package_dir``, or (None, None).

    Only a checkout of this project counts: a wheel installed into a virtual environment that happens to
    sit inside some repository reports None rather than that repository's commit. ``dirty``: tracked
    files differ from the commit (untracked files are ignored)."""
    top_level = _git(package_dir, "rev-parse", "--show-toplevel")
    if top_level is None or Path(top_level).resolve() != package_dir.resolve().parent:
        return None, None
    commit = _git(package_dir, "rev-parse", "HEAD")
    status = _git(package_dir, "status", "--porcelain", "--untracked-files=no")
    return commit, None if commit is None or status is None else bool(status)


def provenance() -> dict[str, str | bool | None]:
    """``version``, ``git_commit`` and ``git_dirty`` of the running code (None where unknown). Never
    raises: it goes into every metrics.json and must not be what makes a finished job fail."""
    try:
        commit, dirty = git_revision()
    except Exception:  # a record must never fail the job it describes
        commit, dirty = None, None
    return {"version": __version__, "git_commit": commit, "git_dirty": dirty}
