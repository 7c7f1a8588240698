"""Hyper-parameter search on the validation objective (``hparams_search=...``, the Optuna sweeper).

    python -m anomaly_attn.train -m hparams_search=textures_optuna            # conf/hparams_search/

Hydra sweepers optimise the value the task function returns, so ``anomaly_attn.train`` returns
:func:`job_return`: the **validation objective** of the job's selected map, i.e.
``selection.objective`` (``mean_auroc_aupro`` by default: the mean of pixel AUROC and AUPRO) of the
``validation`` block of ``metrics.json`` - the selected map scored on the held-out normal training
images with synthetic anomalies. Test images never enter it (the test set is scored after the choice,
and its metrics are not read here).

A job that failed (e.g. a learning rate that makes the loss non-finite) returns its failure marker
(``{"status": "failed", ...}``), which the Optuna sweeper cannot cast to float: it marks that trial
FAIL and the study goes on (``max_failure_rate: 1.0`` in the configs). NaN is never returned: Optuna's
``tell`` rejects it in a way that would stop the study.

Kept free of torch/Lightning imports: the entry point imports it before any job starts.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.cli.jobs import SWEEP_STAMP
from anomaly_attn.common.objectives import objective_value
from anomaly_attn.config.paths import CONFIG_DIR, split_command_line, with_user_config_dirs

RESULTS_FILE = "optimization_results.yaml"
_MISSING = object()


def validation_objective(metrics: Mapping[str, Any], objective: str = "mean_auroc_aupro") -> float:
    """The validation objective of a job's ``metrics.json``: ``objective`` (the ``selection`` block's
    own objective when it has one) of the selected map's ``validation`` scores.

    Raises ``ValueError`` naming the cause when the job has no validation scores (``validation=none``,
    or a failed job)."""
    if metrics.get("status") == "failed":
        raise ValueError(f"the job failed: {metrics.get('error', 'see its error.txt')}")
    selection = metrics.get("selection")
    if isinstance(selection, Mapping) and selection.get("objective"):
        objective = str(selection["objective"])
    validation = metrics.get("validation")
    if not isinstance(validation, Mapping):
        raise ValueError(
            "metrics.json has no `validation` block (the run had no synthetic validation set): "
            "run with a validation generator (e.g. validation=mixed), not validation=none"
        )
    return objective_value(validation, objective)


def job_return(result: Mapping[str, Any], objective: str = "mean_auroc_aupro") -> float | dict[str, Any]:
    """What the train task function returns: the finite validation objective, else a failure marker
    (a dict, which a sweeper records as a failed trial; never NaN)."""
    try:
        value = validation_objective(result, objective)
    except (ValueError, KeyError, TypeError) as error:
        if result.get("status") == "failed":
            return dict(result)
        return {"status": "failed", "error": f"no validation objective: {error}"}
    if not math.isfinite(value):
        return {"status": "failed", "error": f"validation objective {objective} is {value}"}
    return value


def search_finished(sweep_dir: str | Path) -> bool:
    """Whether an Optuna sweep wrote its ``optimization_results.yaml`` into ``sweep_dir`` after the
    sweep started (the sweep stamp of ``anomaly_attn.cli.jobs``): then the study ended with a best trial,
    and its failed trials are results of the search (Optuna marked them FAIL), not a reason to exit
    non-zero."""
    results, stamp = Path(sweep_dir) / RESULTS_FILE, Path(sweep_dir) / SWEEP_STAMP
    return results.exists() and stamp.exists() and results.stat().st_mtime_ns >= stamp.stat().st_mtime_ns


def check_search_command(args: list[str]) -> None:
    """Before Hydra starts a command line with ``hparams_search=...``: the Optuna sweeper plugin is
    installed, and the composed config can give every trial a validation objective to maximise
    (:func:`check_search_config`). Hydra itself would only say that ``hydra/sweeper/optuna`` is not
    found, and Hydra callbacks cannot stop a sweep (it turns their exceptions into warnings)."""
    flags, overrides, config_name = split_command_line(with_user_config_dirs(args))
    if not any(item.lstrip("+").startswith("hparams_search=") for item in overrides):
        return
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        raise ValueError(
            "hparams_search needs the Optuna sweeper plugin, which is not installed: "
            "pip install 'hydra-optuna-sweeper>=1.3' (or pip install -e '.[search]' in a clone)"
        )
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [item.input_line for item in parsed if not item.is_sweep_override()]
    swept = [item.key_or_group for item in parsed if item.is_sweep_override() and not item.is_add()]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        config = compose(config_name=config_name, overrides=fixed, return_hydra_config=True)
    check_search_config(config, swept)


def check_search_config(config: DictConfig, swept: list[str] | None = None) -> None:
    """Raise ``ValueError`` naming the key and the fix when a search (``config``: composed with its
    Hydra node; ``swept``: keys given a search range on the command line) cannot work."""
    generators = OmegaConf.select(config, "validation.generators")
    if not generators:
        name = OmegaConf.select(config, "validation.name", default="none")
        raise ValueError(
            f"hparams_search optimises the validation objective of the selected map, but validation={name} "
            "builds no synthetic validation set. Drop validation=none (or pick validation=mixed, "
            "synthetic_perlin, cutpaste or shapes)."
        )
    groups = set(OmegaConf.select(config, "hydra.runtime.choices", default={}) or {})
    params = OmegaConf.select(config, "hydra.sweeper.params", default={}) or {}
    for key in [*map(str, params), *(swept or [])]:
        if key.startswith("+") or key in groups:
            continue  # an added key, or a config group (loss=..., model=...)
        if OmegaConf.select(config, key, default=_MISSING) is _MISSING:
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            node = OmegaConf.select(config, parent) if parent else config
            keys = sorted(str(k) for k in node) if isinstance(node, DictConfig) else []
            raise ValueError(
                f"hydra.sweeper.params searches {key}, which this config does not have"
                + (f" ({parent} has: {', '.join(keys)})" if keys else "")
                + ". Fix the key in the hparams_search config or on the command line (e.g. another model "
                "has other keys: conf/model/*.yaml), or add it with a leading '+'."
            )
    direction = OmegaConf.select(config, "hydra.sweeper.direction")
    if direction is not None and str(direction).split(".")[-1] != "maximize":
        raise ValueError(
            f"hydra.sweeper.direction={direction}: the validation objective "
            f"({OmegaConf.select(config, 'selection.objective')}) is higher-is-better; use "
            "hydra.sweeper.direction=maximize"
        )
