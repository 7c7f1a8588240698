"""What a finished job's numbers depend on, so a re-run sweep can tell a current result from a stale one.

Every ``metrics.json`` records, in its ``provenance`` block:

- ``config_digest``: SHA-256 of the resolved config (secrets scrubbed) minus the keys that only say where
  or how a job runs (``RUN_ONLY_KEYS``: output paths, the data root, resume/skip switches, loggers,
  figure counts, thread counts), so moving the data or re-running into another folder keeps the digest;
- ``code_digest``: SHA-256 of the package's Python sources, so a changed metric or map re-runs jobs but an
  edited README does not;
- the package version, git commit and whether the checkout had uncommitted changes.

``skip_completed=true`` skips a job only when both digests match the ones its ``metrics.json`` recorded;
otherwise it says which one changed and runs the job again. ``report`` marks runs whose config digest
differs from the others of their sweep (a sweep re-run that left some jobs behind).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent.parent

# Dotted keys that do not change a job's numbers: where it runs, where its data sits, how it logs.
RUN_ONLY_KEYS: tuple[str, ...] = (
    "paths",
    "hydra",
    "resume",
    "skip_completed",
    "logger",
    "experiment",
    "experiment_name",
    "tags",
    "threads",
    "output_dir",
    "dataset.root",
    "dataset.download",
    "dataset.url",
    "dataset.num_workers",
    "dataset.cache",
    "visualization",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.logger",
)


def _without(node: Any, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if not isinstance(node, dict) or head not in node:
        return
    if rest:
        _without(node[head], rest)
    else:
        del node[head]


def digest_of(data: Any) -> str:
    """SHA-256 (first 16 hex digits) of a JSON-serialisable value, independent of key order."""
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_digest(config: Mapping[str, Any], run_only_keys: tuple[str, ...] = RUN_ONLY_KEYS) -> str:
    """The digest of a resolved config (a plain container) without ``run_only_keys``."""
    data = json.loads(json.dumps(config, default=str))
    for key in run_only_keys:
        _without(data, key)
    return digest_of(data)


@lru_cache(maxsize=1)
def code_digest(package_dir: Path = PACKAGE_DIR) -> str:
    """The digest of every ``*.py`` under the package (path and bytes): changes exactly when code does."""
    sha = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        sha.update(path.relative_to(package_dir).as_posix().encode())
        sha.update(b"\0")
        sha.update(path.read_bytes())
        sha.update(b"\0")
    return sha.hexdigest()[:16]


def fingerprint(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``provenance`` block of a metrics.json: config and code digests plus version and commit."""
    from anomaly_attn.version import provenance

    return {"config_digest": config_digest(config), "code_digest": code_digest(), **provenance()}


def stale_reason(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """Why a finished job's recorded fingerprint no longer describes the job (None: it still does)."""
    old = recorded.get("provenance")
    if not isinstance(old, Mapping) or "config_digest" not in old:
        return "its metrics.json records no fingerprint (written by an older version)"
    changed = [
        what
        for key, what in (("config_digest", "the config"), ("code_digest", "the code"))
        if old.get(key) != current.get(key)
    ]
    if not changed:
        return None
    return " and ".join(changed) + " changed since it ran"
