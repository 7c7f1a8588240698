"""Expand ``category=glob(...)`` and ``layer=glob(...)`` against what the chosen dataset and model have.

Hydra's own ``glob`` only filters config-group options; on a plain value such as ``category`` it
silently launches zero jobs. So the command line is rewritten before Hydra sees it: the config is
composed with the non-sweep overrides, the dataset lists its categories and the backbone its layers,
and each glob becomes an explicit comma list. Explicit values are validated here too, so a typo fails
before any job starts, listing the valid names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.config.paths import CONFIG_DIR, split_command_line


class SweepError(ValueError):
    """A sweep or override names something the chosen dataset/model does not have."""


def dataset_categories(cfg: DictConfig) -> tuple[list[str], Callable[[str], str]]:
    """The dataset's categories and a validator (returns the canonical name or raises)."""
    from anomaly_attn.data.build import build_dataset

    dataset = build_dataset(cfg)
    return list(dataset.categories()), dataset.check_category


def model_layers(cfg: DictConfig) -> tuple[list[str], Callable[[str], str]]:
    """The backbone's addressable layers and a validator."""
    from anomaly_attn.models.registry import build_backbone

    model = build_backbone(cfg)
    names = list(model.layer_names())

    def check(layer: str) -> str:
        if layer not in names:
            raise SweepError(
                f"layer={layer!r} is not a layer of model {cfg.model.name!r}. "
                f"Valid layers: {', '.join(names)}. "
                f"List them with shapes: python -m anomaly_attn.layers model={cfg.model.name}"
            )
        return layer

    return names, check


SWEEPABLE: dict[str, Callable[[DictConfig], tuple[list[str], Callable[[str], str]]]] = {
    "category": dataset_categories,
    "layer": model_layers,
}


def expand_sweep_overrides(
    args: list[str], config_dir: Path = CONFIG_DIR, config_name: str = "config"
) -> list[str]:
    """Rewrite ``category``/``layer`` globs into explicit lists and validate explicit values.

    With a ``ckpt_path`` (evaluate), the model and the dataset are the checkpoint's (see
    :func:`anomaly_attn.jobs.job_config.config_for_checkpoint`), so globs expand against them."""
    flags, overrides, config_name = split_command_line(args, config_name)
    parser = OverridesParser.create()
    parsed: list[Override] = parser.parse_overrides(overrides)
    targets = [o for o in parsed if o.key_or_group in SWEEPABLE and not o.is_delete()]
    if not targets:
        return args
    fixed = [o.input_line for o in parsed if not o.is_sweep_override() and o.key_or_group not in SWEEPABLE]
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=fixed)
    if "ckpt_path" in cfg and not OmegaConf.is_missing(cfg, "ckpt_path"):
        from anomaly_attn.jobs.job_config import config_for_checkpoint

        cfg = config_for_checkpoint(cfg, fixed)
    rewritten: dict[str, str] = {}
    for override in targets:
        key = override.key_or_group
        needs = "dataset" if key == "category" else "model"
        if needs in swept:
            raise SweepError(
                f"{key}={override.value()!r} is resolved against one {needs}, but {needs} is swept too. "
                f"Run one sweep per {needs}, or list the {key} values explicitly."
            )
        valid, check = SWEEPABLE[key](cfg)
        value = override.value()
        if isinstance(value, Glob):
            chosen = value.filter(valid)
            if not chosen:
                raise SweepError(
                    f"{override.input_line!r} matches none of the {len(valid)} {key} values: "
                    f"{', '.join(valid)}"
                )
        elif override.is_sweep_override():
            chosen = [check(str(v)) for v in override.sweep_iterator()]
        else:
            chosen = [check(str(value))] if value is not None else []
        if chosen:
            rewritten[override.input_line] = f"{override.get_key_element()}={','.join(chosen)}"
    result = list(flags)
    result.extend(rewritten.get(o, o) for o in overrides)
    return result
