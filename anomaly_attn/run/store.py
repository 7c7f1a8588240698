"""A run directory's files, written and read in one place (no torch, no Lightning).

    RUN/config.yaml            the resolved config, secrets scrubbed (write_run_config)
    RUN/metrics.json           the RunRecord (write_record / read_record / read_metrics)
    RUN/per_image_scores.csv   one row per test image (write_per_image_scores / read_image_scores)
    RUN/error.txt              why the job failed (cli/jobs.py)

Every file is written then renamed (``common.atomic``): a killed job never leaves a torn file.
``completed_metrics`` is how a re-run sweep skips a job whose metrics.json has this job's fingerprint.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.common.atomic import atomic_path, write_json_atomic, write_text_atomic
from anomaly_attn.common.fingerprint import fingerprint, stale_reason
from anomaly_attn.config.safety import scrub_secrets
from anomaly_attn.run.record import SELECTED, RunRecord, translate_old_config, translate_old_keys

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
SCORES_FILE = "per_image_scores.csv"
ERROR_FILE = "error.txt"


def public_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without anything that looks like a secret (keys, tokens, passwords)."""
    return scrub_secrets(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[return-value]


def job_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """This job's ``provenance`` block (config and code digests, version, commit)."""
    return fingerprint(public_config(cfg))


def write_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """The resolved config, secrets scrubbed, as the run directory's config.yaml."""
    write_text_atomic(Path(run_dir) / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(public_config(cfg))))


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """A run directory's config.yaml as plain data ({} when absent or unreadable), in today's names: the
    map group of runs before 0.2 is ``attention`` (``translate_old_config``)."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        loaded = yaml.safe_load(path.read_text()) if path.exists() else {}
    except (OSError, yaml.YAMLError):
        loaded = {}
    return translate_old_config(loaded) if isinstance(loaded, dict) else {}


def write_record(run_dir: Path, record: RunRecord) -> dict[str, Any]:
    """Write ``record`` as ``run_dir/metrics.json``; returns what was written."""
    data = record.to_json()
    write_json_atomic(Path(run_dir) / METRICS_FILE, data)
    return data


def read_metrics(path: Path) -> dict[str, Any]:
    """A metrics.json (the file, or the run directory holding it) in today's key names. Raises
    ``OSError``/``ValueError`` when it cannot be read."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    return translate_old_keys(json.loads(path.read_text()))


def read_record(run_dir: Path) -> RunRecord:
    """The RunRecord of a run directory."""
    return RunRecord.from_json(read_metrics(run_dir))


def write_per_image_scores(path: Path, rows: list[dict[str, Any]]) -> None:
    """``per_image_scores.csv``: one row per test image, the columns of the first row."""
    if not rows:
        return
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_image_scores(run_dir: Path) -> dict[str, np.ndarray] | None:
    """``label`` and every ``score_*`` column of a run's per_image_scores.csv (None if absent). Runs
    written before the selected map's column was ``score_selected`` call it ``score_attention``."""
    path = Path(run_dir) / SCORES_FILE
    if not path.exists():
        return None
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    columns = {key: np.array([float(r[key]) for r in rows]) for key in rows[0] if key.startswith("score_")}
    if "score_attention" in columns and f"score_{SELECTED}" not in columns:
        columns[f"score_{SELECTED}"] = columns.pop("score_attention")
    columns["label"] = np.array([int(r["label"]) for r in rows])
    return columns


def completed_metrics(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a job that already finished in ``run_dir`` when ``skip_completed`` is on and its
    recorded fingerprint (config and code digests, see :mod:`anomaly_attn.common.fingerprint`) matches this
    job's, so a re-run sweep only runs what is missing or stale; else None. Creates ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / METRICS_FILE
    if not (cfg.get("skip_completed") and metrics_path.exists()):
        return None
    try:
        recorded = json.loads(metrics_path.read_text())
    except (OSError, ValueError) as error:
        log.warning("Re-running %s: its metrics.json is unreadable (%s).", run_dir, error)
        return None
    reason = stale_reason(recorded, job_fingerprint(cfg))
    if reason is not None:
        log.warning("Re-running %s although it has a metrics.json: %s.", run_dir, reason)
        return None
    log.info("Skipping %s: metrics.json exists for this config and code (set skip_completed=false to "
             "re-run).", run_dir)
    return recorded


def flatten_metrics(metrics: dict[str, Any], prefix: str = "test/") -> dict[str, float]:
    """Numeric leaves as 'test/pixel_auroc', 'test/controls/residual_l2/pixel_auroc', ... (loggers)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def run_config_path(ckpt_path: str | Path) -> Path | None:
    """``<run dir>/config.yaml`` for ``<run dir>/checkpoints/X.ckpt`` (or next to the file), if present."""
    path = Path(ckpt_path).resolve()
    for folder in (path.parent.parent, path.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None
