"""A job's configuration beyond what Hydra composed: the map keys the command line fixes (selection keeps
them), and a checkpoint's training setup (evaluate, and category/layer globs against a checkpoint).

No Lightning: the entry points use it before a job starts. A checkpoint's run directory's ``config.yaml``
(next to ``checkpoints/``) says which dataset and category it was trained on, so a re-evaluation needs
only the checkpoint path.
"""

from __future__ import annotations

import logging

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from anomaly_attn.maps.checkpoints import read_hyper_parameters
from anomaly_attn.maps.selection_result import FIXABLE_KEYS
from anomaly_attn.run.record import translate_old_config
from anomaly_attn.run.store import run_config_path

log = logging.getLogger(__name__)

# Command-line keys that fix a part of the map (a key of maps.selection_result.FIXABLE_KEYS): selection then
# chooses only the rest. (The old spelling ``attention=...`` is translated before: cli/arguments.py.)
COMMAND_LINE_KEYS: dict[str, str] = {
    "layer": "layer",
    "map": "variant",
    "map.variant": "variant",
    "map.input": "input",
    "map.fusion": "fusion",
    "map.smoothing_sigma": "smoothing_sigma",
    "evaluation.score": "score",
}
if set(COMMAND_LINE_KEYS.values()) != set(FIXABLE_KEYS):
    raise ImportError("COMMAND_LINE_KEYS must name every key of maps.selection_result.FIXABLE_KEYS")


def fixed_keys_from_overrides(overrides: list[str]) -> list[str]:
    """Selection keys that command-line overrides (``layer=...``, ``map=gradcam``, ...) fix."""
    keys = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in COMMAND_LINE_KEYS:
            keys.append(COMMAND_LINE_KEYS[key])
    return sorted(set(keys))


def add_fixed_keys(cfg: DictConfig, overrides: list[str]) -> None:
    """Record in ``cfg.selection.fix`` what the command line fixed (entry points call this)."""
    with open_dict(cfg):
        current = list(cfg.selection.get("fix") or [])
        cfg.selection.fix = sorted(set(current) | set(fixed_keys_from_overrides(overrides)))


# Taken from the training run's config.yaml unless the command line overrides them.
RUN_CONFIG_KEYS = ("dataset", "category", "seed", "loss", "selection", "validation", "center_input")
# Taken from the checkpoint's hyper-parameters (what the weights were built with) unless overridden;
# the model itself can never be overridden: the weights fix it.
HPARAM_KEYS = {"map": "attention", "layer": "layer", "evaluation": "evaluation"}


def _override_keys(overrides: list[str]) -> list[str]:
    """Keys (``dataset``, ``dataset.root``, ``layer``, ...) set by plain command-line overrides."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [o.key_or_group for o in parsed if not o.is_delete() and not o.key_or_group.startswith("hydra")]


def config_for_checkpoint(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """``cfg`` (the composed evaluate/predict config) with the checkpoint's training setup filled in.

    The model comes from the checkpoint's hyper-parameters; dataset, category, seed, loss and selection
    from the run's config.yaml (or ``cfg``'s defaults when the checkpoint has no run directory);
    attention, layer and evaluation from the hyper-parameters. Every key named in ``overrides`` (the
    command line) keeps ``cfg``'s value instead. The dataset is read at the model's image size and
    channels, so a model can be evaluated on another dataset.
    """
    hparams = read_hyper_parameters(cfg.ckpt_path)
    keys = _override_keys(overrides)
    if any(key == "model" or key.startswith("model.") for key in keys):
        raise ValueError(
            "the model is fixed by the checkpoint's weights and cannot be overridden; "
            "drop the model override."
        )
    result = cfg.copy()
    with open_dict(result):
        config_file = run_config_path(cfg.ckpt_path)
        if config_file is not None:
            # In today's names (a run from before 0.2 says `attention:` and the variant `seed`).
            stored = OmegaConf.to_container(OmegaConf.load(config_file))
            run_cfg = OmegaConf.create(translate_old_config(stored))
            for key in RUN_CONFIG_KEYS:
                if key in run_cfg:
                    result[key] = run_cfg[key]
        else:
            log.warning(
                "No config.yaml next to %s: dataset and category come from the command line or defaults.",
                cfg.ckpt_path,
            )
        for key, hparam in HPARAM_KEYS.items():
            value = hparams.get(hparam)
            if value is not None:
                result[key] = OmegaConf.create(value) if isinstance(value, dict) else value
        result.center_input = bool(hparams.get("center_input", True))
        result.model = OmegaConf.create(hparams["model"])
        # Group overrides (dataset=mvtec) before leaf overrides (dataset.root=...) so both survive.
        for key in sorted(set(keys), key=lambda k: k.count(".")):
            OmegaConf.update(result, key, OmegaConf.select(cfg, key), force_add=True)
        result.dataset.image_size = int(hparams["model"]["image_size"])
        result.dataset.channels = int(hparams["model"]["in_channels"])
    # What the command line fixes (layer=, map=, ...) selection keeps, as in training.
    add_fixed_keys(result, overrides)
    return result
