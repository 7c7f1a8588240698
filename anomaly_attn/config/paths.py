"""Where the Hydra configs are: the one place every entry point, the sweep expansion and the scripts ask.

There is one copy, the repository's top-level ``conf/``. From a clone or an editable install it is read
there; a wheel ships the same files as the package ``anomaly_attn.conf`` (pyproject.toml maps ``conf/``
there), so an installed package finds them next to its code, from any working directory.

Users add configs without forking, from a folder laid out like ``conf/`` (``MYDIR/dataset/mine.yaml`` is
then ``dataset=mine``):

- ``ANOMALY_ATTN_CONFIG_DIR=MYDIR`` (several folders: separated by ``os.pathsep``), or
- Hydra's own ``hydra.searchpath=[file:///abs/MYDIR]`` on the command line.

Both come after the package's configs in Hydra's search path: new names are found, a name the package
already has (``dataset/textures.yaml``) keeps the package's file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

PACKAGE_DIR = Path(__file__).resolve().parent.parent
CONFIG_DIR_ENV = "ANOMALY_ATTN_CONFIG_DIR"
_SEARCHPATH_KEY = "hydra.searchpath"

# Flags of Hydra's command line that take a value in the next argument.
_FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--info",
    "-i",
    "--package",
    "-p",
}


def find_config_dir(package_dir: Path = PACKAGE_DIR) -> Path:
    """The folder holding ``config.yaml``: ``package_dir/conf`` in an installed wheel, else the source
    tree's ``conf/`` next to the package."""
    candidates = (package_dir / "conf", package_dir.parent / "conf")
    for candidate in candidates:
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"anomaly_attn's Hydra configs are missing: no config.yaml in {' or '.join(map(str, candidates))}. "
        "Install the package from a clone with `pip install .` (the wheel ships conf/ as anomaly_attn/conf), "
        "or run from the repository."
    )


CONFIG_DIR = find_config_dir()


def split_command_line(args: list[str], config_name: str = "config") -> tuple[list[str], list[str], str]:
    """(flags, overrides, config_name) from a Hydra command line."""
    flags, overrides = [], []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-") and "=" not in arg:
            flags.append(arg)
            if arg in _FLAGS_WITH_VALUE and i + 1 < len(args):
                if arg in ("--config-name", "-cn"):
                    config_name = args[i + 1]
                flags.append(args[i + 1])
                i += 1
        else:
            overrides.append(arg)
        i += 1
    return flags, overrides, config_name


def user_config_dirs(environ: Mapping[str, str] = os.environ) -> list[Path]:
    """The folders named by ``$ANOMALY_ATTN_CONFIG_DIR``, absolute; each must exist."""
    folders = []
    for entry in environ.get(CONFIG_DIR_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        folder = Path(entry).expanduser().resolve()
        if not folder.is_dir():
            raise ValueError(
                f"{CONFIG_DIR_ENV} names {entry!r}, which is not a directory. Point it at a folder laid out "
                f"like conf/ (e.g. MYDIR/dataset/mine.yaml), or unset it."
            )
        folders.append(folder)
    return folders


def _quote(value: str) -> str:
    """``value`` as a single-quoted Hydra override string (backslashes before quotes and at the end are
    doubled, quotes escaped), so paths with spaces, commas or brackets survive the override grammar."""
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f"'{escaped}'"


def with_user_config_dirs(args: list[str], environ: Mapping[str, str] = os.environ) -> list[str]:
    """A Hydra command line with the ``$ANOMALY_ATTN_CONFIG_DIR`` folders appended to ``hydra.searchpath``
    (merged into a ``hydra.searchpath=[...]`` already on the line, whose entries stay first)."""
    folders = user_config_dirs(environ)
    if not folders:
        return list(args)
    flags, overrides, _ = split_command_line(args)
    searchpath = [f"file://{folder}" for folder in folders]
    for index, override in enumerate(overrides):
        if override.lstrip("+").startswith(f"{_SEARCHPATH_KEY}="):
            given = OverridesParser.create().parse_override(override).value()
            if not isinstance(given, list):
                raise ValueError(f"{override!r}: {_SEARCHPATH_KEY} takes a list, e.g. [file:///abs/MYDIR]")
            searchpath = [str(entry) for entry in given] + [p for p in searchpath if p not in given]
            del overrides[index]
            break
    overrides.append(f"{_SEARCHPATH_KEY}=[{','.join(map(_quote, searchpath))}]")
    # Overrides first: Hydra's parser needs them in one run, and a value-less `--info` may end the line.
    return [*overrides, *flags]
