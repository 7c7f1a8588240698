"""Checks of a command line before any job starts, each failing with the culprit and the fix.

- The config composes. When it does not, the misspelled key or config-group option is named with a
  "did you mean" and the valid names; Hydra's own advice for an unknown key (``+key=value``) is not
  repeated, since such a key only reaches code that does not read it.
- Mandatory values (``???``: ``ckpt_path``, a folder dataset's ``root``) are given.
- Every name the jobs look up in a registry (map variant, input, fusion, image score, the selection
  lists, losses, synthetic generators, classical detector, model) is registered, for each value of a
  sweep too, so that a typo fails the command instead of one job in ten.
- Keys added to ``trainer`` with ``+`` are arguments of Lightning's Trainer.
- The output folder can be written.

Model- and dataset-specific values (layers, categories) are checked by ``cli/sweeps.py``.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.common.registries import did_you_mean, unknown_name
from anomaly_attn.config.paths import CONFIG_DIR, split_command_line
from anomaly_attn.config.safety import check_config

# The command's example for each mandatory key, by primary config.
_REQUIRED_EXAMPLES = {
    "ckpt_path": "ckpt_path=outputs/quickstart/multirun/category=brick/checkpoints/model.ckpt",
    "input_dir": "input_dir=FOLDER_OF_IMAGES",
    "dataset.root": "dataset.root=/path/to/your/images",
}
_PROGRAMS = {"config": "train", "evaluate": "evaluate", "predict": "predict", "classical": "classical"}
_UNKNOWN_KEY = re.compile(r"Could not override '([^']+)'")


def compose_config(overrides: list[str], config_name: str, with_hydra: bool = True) -> DictConfig:
    """The config as Hydra will compose it (with Hydra's own node, or as a job sees it), or a
    ``ValueError`` that names the unknown key or group option."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=with_hydra)
    except MissingConfigException as error:
        raise ValueError(_unknown_option(error)) from None
    except ConfigCompositionException as error:
        # Explained after this composition is torn down: the explanation composes the config again.
        raise ValueError(_unknown_key(error, overrides, config_name)) from None
    finally:
        GlobalHydra.instance().clear()


def _unknown_option(error: MissingConfigException) -> str:
    """``map=gradcamxx``: the group, the valid options, the closest ones."""
    missing = str(error.missing_cfg_file or "")
    group, _, option = missing.rpartition("/")
    options = sorted(str(name) for name in (error.options or []))
    if not group or not options:
        return str(error).strip().splitlines()[0]
    return f"{group}={option} is not a config of the {group} group.{did_you_mean(option, options)} " + (
        f"Valid: {', '.join(options)}."
    )


def _unknown_key(error: ConfigCompositionException, overrides: list[str], config_name: str) -> str:
    """``trainer.max_epoch=1``: the key, the closest existing keys, the keys of its parent node."""
    match = _UNKNOWN_KEY.search(str(error))
    if match is None:
        return str(error).strip().splitlines()[0]
    key = match.group(1)
    others = [o for o in overrides if o.lstrip("+~").partition("=")[0] != key]
    cfg = compose_config(others, config_name)
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    siblings = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    if leaf in siblings:  # the key exists; its new value does not fit (e.g. a dict with a new key)
        cause = str(error.__cause__ or error).strip().splitlines()[0]
        return f"cannot set {key}: {cause}"
    everywhere = _dotted_keys(cfg)
    hint = did_you_mean(leaf, siblings, prefix=f"{parent}." if parent else "")
    hint = hint or did_you_mean(key, everywhere) or did_you_mean(leaf, everywhere)
    where = f"Keys of {parent}: {', '.join(siblings)}." if parent and siblings else ""
    return f"{key} is not a config key.{hint} {where}".strip()


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    """Every key of a config as a dotted path (Hydra's own node left out)."""
    if not isinstance(node, DictConfig):
        return []
    keys = []
    for key in node.keys():
        if str(key) == "hydra" and not prefix:
            continue
        path = f"{prefix}{key}"
        keys.append(path)
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            keys.extend(_dotted_keys(child, path + "."))
    return keys


def check_required(cfg: DictConfig, config_name: str, swept: frozenset[str] = frozenset()) -> None:
    """Refuse a missing mandatory value (``???``), with the command that gives it; ``swept`` keys get
    their values from the sweep (``-m ckpt_path=a.ckpt,b.ckpt``)."""
    job_keys = [str(key) for key in cfg.keys() if key != "hydra"]  # Hydra's node is filled in at launch
    missing = sorted(set(OmegaConf.missing_keys(OmegaConf.masked_copy(cfg, job_keys))) - swept)
    if not missing:
        return
    program = _PROGRAMS.get(config_name, config_name)
    examples = " ".join(_REQUIRED_EXAMPLES.get(key, f"{key}=VALUE") for key in missing)
    raise ValueError(
        f"{program} needs {', '.join(missing)}, e.g. python -m anomaly_attn.{program} {examples}"
    )


def check_names(cfg: DictConfig) -> None:
    """Look up every registry name the jobs will use (extensions imported first, as a job does)."""
    from anomaly_attn.config.extensions import import_extensions

    import_extensions(cfg)
    if "model" in cfg and "name" in cfg.model:
        _check_model(str(cfg.model.name))
    if "map" in cfg:
        from anomaly_attn.maps.specs import ScoreSpec, spec_from_map_config

        spec = spec_from_map_config(cfg.map, layer=str(cfg.get("layer")))
        ScoreSpec(spec, str(cfg.evaluation.score), float(cfg.evaluation.topk_percent))
        _check_losses(cfg)
    if "selection" in cfg and "map" in cfg:
        _check_fixed_fusion(cfg)
    if "selection" in cfg:
        from anomaly_attn.maps.selection_result import SelectionSettings

        SelectionSettings.from_config(OmegaConf.to_container(cfg.selection, resolve=True))
    if "validation" in cfg:
        from anomaly_attn.data.synthetic import get_generator

        for name in cfg.validation.get("generators") or []:
            get_generator(str(name))
    if "detector" in cfg and "name" in cfg.detector:
        from anomaly_attn.classical.detectors import DETECTORS

        _check_in("detector", str(cfg.detector.name), DETECTORS)


def _check_fixed_fusion(cfg: DictConfig) -> None:
    """``zsum`` standardises both maps with statistics of validation normal images, which map selection
    computes: with ``selection.map=fixed`` nothing would, and the job would fail after training."""
    if str(cfg.selection.map) == "fixed" and str(cfg.map.get("fusion", "none")) == "zsum":
        raise ValueError(
            "map.fusion=zsum needs the validation statistics that map selection computes, and "
            "selection.map=fixed skips selection. Use selection.map=auto (map.fusion given on the "
            "command line stays fixed, selection chooses the rest) or map.fusion=product."
        )


def _check_in(key: str, value: str, valid: Any) -> None:
    if value not in [str(name) for name in valid]:
        raise ValueError(unknown_name(key, value, valid))


def _check_model(name: str) -> None:
    from anomaly_attn.models.registry import list_models

    _check_in("model.name", name, list_models())


def _check_losses(cfg: DictConfig) -> None:
    from anomaly_attn.training.losses import ATTENTION_LOSSES, RECONSTRUCTION_LOSSES

    for term in cfg.loss.get("terms") or {}:
        _check_in("loss.terms", str(term), RECONSTRUCTION_LOSSES)
    _check_in("map.loss", str(cfg.map.get("loss", "none")), ATTENTION_LOSSES)


def check_trainer_keys(cfg: DictConfig) -> None:
    """Every ``trainer`` key is a Lightning Trainer argument or one of the pipeline's speed keys."""
    if "trainer" not in cfg:
        return
    import inspect

    from lightning.pytorch import Trainer

    from anomaly_attn.training.speed import SPEED_KEYS

    # The pipeline reads _target_ and the speed keys itself; the rest become Trainer arguments.
    valid = [*inspect.signature(Trainer.__init__).parameters, "_target_", *SPEED_KEYS]
    for key in cfg.trainer:
        if str(key) not in valid:
            raise ValueError(
                f"trainer.{key} is not an argument of Lightning's Trainer."
                f"{did_you_mean(str(key), valid, prefix='trainer.')} "
                f"Keys of trainer: {', '.join(str(k) for k in cfg.trainer)}."
            )


def check_output_folder(cfg: DictConfig, multirun: bool) -> None:
    """The run (or sweep) folder can be created: its nearest existing ancestor is a writable folder."""
    folder = Path(str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)).expanduser()
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    try:
        if not ancestor.is_dir():
            raise NotADirectoryError(f"{ancestor} is a file")
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise ValueError(
            f"cannot write the output folder {folder} ({error}). Choose a writable one with "
            "paths.output_dir=DIR (or ANOMALY_ATTN_OUTPUT_DIR=DIR)."
        ) from None


def preflight(args: list[str], config_name: str) -> None:
    """All checks above on ``args`` (a Hydra command line); sweep values are checked one at a time.

    Raises ValueError naming the culprit and the fix."""
    flags, overrides, config_name = split_command_line(args, config_name)
    parsed: list[Override] = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    cfg = compose_config(fixed, config_name)
    check_config(cfg)  # _target_s before anything is instantiated, Hydra's callbacks/launcher included
    check_required(cfg, config_name, frozenset(o.key_or_group for o in parsed if o.is_sweep_override()))
    check_output_folder(cfg, multirun="-m" in flags or "--multirun" in flags)
    check_names(cfg)
    if any(o.input_line.lstrip("+").startswith("trainer.") for o in parsed if o.input_line.startswith("+")):
        check_trainer_keys(cfg)
    for override in parsed:
        if override.is_sweep_override() and override.key_or_group not in ("category", "layer"):
            for value in _sweep_values(override):
                check_names(compose_config([*fixed, value], config_name))


def _sweep_values(override: Override) -> list[str]:
    """``key=value`` for each value of a sweep override (globs of config groups are Hydra's)."""
    if not (override.is_choice_sweep() or override.is_range_sweep()):
        return []  # a glob over a config group's options, an interval: Hydra expands them
    key = override.get_key_element()
    return [f"{key}={value}" for value in override.sweep_string_iterator()]
