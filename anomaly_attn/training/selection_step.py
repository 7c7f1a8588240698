"""The selection step of a job, between training and testing: build the synthetic validation set (held-out
normal images plus synthetic anomalies, never test images), choose the map and image score on it
(``maps.selection.select_maps``), and calibrate the thresholds on the validation normals.

What the command line fixed (``jobs.job_config.add_fixed_keys``: ``cfg.selection.fix``) selection keeps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.common.objectives import objective_value
from anomaly_attn.common.progress import progress
from anomaly_attn.data.synthetic_validation import SyntheticValidation, build_synthetic_validation
from anomaly_attn.maps.controls import CONTROL_MAPS
from anomaly_attn.maps.feature_memory import FeatureMemory, auto_memory_layers
from anomaly_attn.maps.gradient import alpha_variants
from anomaly_attn.maps.health import alpha_health
from anomaly_attn.maps.scoring import score_specs_on, score_specs_streaming, spearman
from anomaly_attn.maps.selection import select_maps, spatial_layers
from anomaly_attn.maps.selection_result import SelectionResult, SelectionSettings
from anomaly_attn.maps.specs import MapSpec
from anomaly_attn.models import layer_shapes
from anomaly_attn.reporting.figures import save_samples_figure
from anomaly_attn.run.record import SELECTED
from anomaly_attn.training.module import AnomalyModule

log = logging.getLogger(__name__)

def fixed_selection(cfg: DictConfig, module: AnomalyModule) -> dict[str, Any]:
    """The map keys selection must keep, with their values: a configured ``layer`` always, and what
    ``selection.fix`` names (from the command line)."""
    attention = module.attention_cfg
    values = {
        "layer": module.layer,
        "variant": attention["variant"],
        "input": attention.get("input", "residual"),
        "fusion": attention.get("fusion", "none"),
        "smoothing_sigma": float(attention.get("smoothing_sigma", 0.0)),
        "score": module.evaluation["score"],
    }
    keys = set(cfg.selection.get("fix") or [])
    if cfg.get("layer") is not None:
        keys.add("layer")
    if values["variant"] in CONTROL_MAPS:
        keys.discard("layer")  # a control map has no layer
    return {key: values[key] for key in sorted(keys)}


def synthetic_validation(
    cfg: DictConfig, datamodule: Any, run_dir: Path
) -> SyntheticValidation:
    """Held-out normal images plus the same images with synthetic anomalies (never test images), and a
    figure of samples in ``figures/validation_samples.png``."""
    validation = cfg.validation
    synthetic = build_synthetic_validation(
        datamodule.val_set.images_tensor() if len(datamodule.val_set) else torch.empty(0),
        datamodule.train_images_tensor(),
        list(validation.generators),
        seed=int(cfg.seed),
        max_images=validation.get("max_images"),
        options=OmegaConf.to_container(validation.get("options") or {}, resolve=True),
        val_fraction=float(cfg.dataset.val_fraction),
    )
    figure_samples = int(validation.get("figure_samples", 8))
    if figure_samples > 0:  # 0: no figure (the set itself is still built and used)
        save_samples_figure(synthetic, run_dir / "figures" / "validation_samples.png", figure_samples)
    return synthetic


def selection_settings(cfg: DictConfig, module: AnomalyModule) -> SelectionSettings:
    """``cfg.selection`` checked against the model's layers (unknown names fail, listing valid ones)."""
    settings = SelectionSettings.from_config(OmegaConf.to_container(cfg.selection, resolve=True))
    settings.validate(module.model.layer_names())
    return settings


def select_on_validation(
    cfg: DictConfig,
    module: AnomalyModule,
    datamodule: Any,
    run_dir: Path,
    synthetic: SyntheticValidation | None = None,
) -> tuple[SelectionResult | None, SyntheticValidation | None]:
    """Choose the anomaly map and image score on synthetic validation data (``selection.map=auto``)
    and install them in ``module``; None when selection is off or there are no synthetic anomalies.
    ``synthetic``: the validation set if already built (else built here)."""
    settings = selection_settings(cfg, module)
    if not cfg.validation.generators:
        if settings.map == "auto":
            log.warning("validation=none: no synthetic anomalies, so the configured map is used as is.")
        return None, None
    synthetic = synthetic if synthetic is not None else synthetic_validation(cfg, datamodule, run_dir)
    module.eval()
    model_cfg = cfg.model
    layers = settings.layers or spatial_layers(
        module.model, int(model_cfg.image_size), int(model_cfg.in_channels)
    )
    if settings.map == "fixed":
        warn_if_configured_layer_degenerate(module, synthetic, layers)
        return None, synthetic
    memory_layers, memory_note = ensure_feature_memory(cfg, module, datamodule, settings)
    result = select_maps(
        module.engine,
        synthetic.images,
        synthetic.masks,
        synthetic.labels,
        settings,
        fixed_selection(cfg, module),
        layers,
        batch_size=int(cfg.dataset.batch_size),
        memory_layers=memory_layers,
        generators=synthetic.generators,
    )
    if memory_note:
        result.notes.append(memory_note)
    module.engine.set_selected_maps(result.map, result.score)
    layer = result.fixed.get("layer")
    message = degenerate_layer_message(layer, result.alpha_health, f"selection kept {result.map.label}")
    if message:
        result.notes.append(message)
        log.warning(message)
    return result, synthetic


def ensure_feature_memory(
    cfg: DictConfig, module: AnomalyModule, datamodule: Any, settings: SelectionSettings
) -> tuple[list[str], str]:
    """The layers of ``selection.feature_memory`` (``auto``: :func:`auto_memory_layers`), each with a
    memory of training patches in ``module.engine.memory``: the ones a checkpoint brought are kept, the
    others built here from the training images (never validation or test images). Returns the layers
    and a note for metrics.json ("" when there are none)."""
    options = settings.feature_memory
    layers = options["layers"]
    if layers == "auto":
        layers = auto_memory_layers(
            layer_shapes(module.model, int(cfg.model.image_size), int(cfg.model.in_channels))
        )
    layers = list(layers)
    if not layers:
        return [], ""
    engine, pool = module.engine, int(options["pool"])
    if engine.memory.pool != pool:
        engine.memory = FeatureMemory(pool=pool)
    missing = [layer for layer in layers if layer not in engine.memory]
    start = time.perf_counter()
    if missing:
        images = datamodule.train_images_tensor()
        batch_size = int(cfg.dataset.batch_size)
        starts = range(0, len(images), batch_size)
        with progress("feature memory: training patches", len(starts)) as advance:
            def batches():
                for first in starts:
                    yield engine.network_input(images[first : first + batch_size].to(engine.device))
                    advance(1)

            built = FeatureMemory.build(
                engine.model, batches(), len(images), missing, int(options["patches"]), pool,
                int(options["seed"]) + int(cfg.seed), int(options["max_distances"]),
            )
        engine.memory.banks.update(built.banks)
    sizes = ", ".join(f"{layer} {tuple(engine.memory.banks[layer].shape)}" for layer in layers)
    origin = f"built in {time.perf_counter() - start:.1f} s" if missing else "already built (checkpoint)"
    note = (f"feature memory (pool {pool}): {sizes} training patches, "
            f"{engine.memory.nbytes() / 2**20:.1f} MiB, {origin}")
    log.info(note)
    return layers, note


def degenerate_layer_message(layer: str | None, health: Mapping[str, Mapping[str, Any]], outcome: str) -> str:
    """The warning for a layer whose Grad-CAM channel weights α are degenerate (``health``: per layer,
    ``degenerate`` and ``alpha_circular`` as in metrics.json), naming the layers with a genuine α; ""
    when ``layer`` is healthy or was not measured."""
    entry = health.get(layer) if layer else None
    if not entry or not entry.get("degenerate"):
        return ""
    healthy = [name for name, value in health.items() if not value.get("degenerate")]
    return (
        f"Layer {layer}: the Grad-CAM channel weights alpha are degenerate there (measured "
        f"alpha_circular={entry.get('alpha_circular', float('nan')):.2g}: float noise or a zero-padding "
        f"artifact), so {'/'.join(alpha_variants())} maps there are not attention; {outcome}. "
        f"Layers with a genuine alpha: {', '.join(healthy) or 'none'}."
    )


def warn_if_configured_layer_degenerate(
    module: AnomalyModule, synthetic: SyntheticValidation, layers: list[str]
) -> None:
    """selection.map=fixed with an alpha-based variant: measure alpha at the configured layer on the
    validation normals and warn when it is degenerate there."""
    spec = module.engine.map_spec
    if spec.source != "attention" or spec.variant not in alpha_variants():
        return
    clean = synthetic.images[synthetic.labels == 0][:16].to(module.device)
    measured_layers = list(dict.fromkeys([*layers, spec.layer]))
    measured = alpha_health(module.model, module.network_input(clean), measured_layers)
    health = {
        name: {"degenerate": value.degenerate, "alpha_circular": value.alpha_circular}
        for name, value in measured.items()
    }
    message = degenerate_layer_message(
        spec.layer, health, "use map=layercam / map=gradcam_pp, or one of the layers below"
    )
    if message:
        log.warning(message)


def validation_metrics(
    module: AnomalyModule, synthetic: SyntheticValidation, cfg: DictConfig
) -> dict[str, dict[str, float]]:
    """Validation (synthetic) pixel AUROC/AUPRO and image AUROC of the selected map and every control."""
    specs = [module.engine.map_spec, *(MapSpec(source=name) for name in CONTROL_MAPS)]
    scores = score_specs_on(
        module.engine,
        synthetic.images,
        synthetic.masks,
        synthetic.labels,
        specs,
        batch_size=int(cfg.dataset.batch_size),
        max_map_size=int(cfg.selection.max_map_size),
        description="validation: the selected map and the controls",
    )
    return {name: scores[spec] for name, spec in zip((SELECTED, *CONTROL_MAPS), specs, strict=True)}


def posthoc_test_analysis(
    cfg: DictConfig, module: AnomalyModule, datamodule: Any, result: SelectionResult
) -> dict[str, Any]:
    """POST-HOC ANALYSIS ONLY (``selection.posthoc_test=true``), after the choice is made and tested:
    every candidate scored on the test set (``candidate.test``), streamed: the test images' base maps
    go to a temporary folder batch by batch and each base's candidates are scored and dropped, so memory
    does not grow with the number of candidates (``maps.scoring.score_specs_streaming``).

    Returns ``posthoc_spearman`` (rank correlation of validation and test objective over the
    candidates: how far validation ranks predict test ranks), ``posthoc_regret`` (the best test
    objective of any candidate minus the chosen map's), ``posthoc_best`` (that candidate's label) and
    ``posthoc_seconds``."""
    start = time.perf_counter()
    specs = list(dict.fromkeys([*(candidate.spec for candidate in result.candidates), result.map]))
    loader = datamodule.test_dataloader()
    scores = score_specs_streaming(
        module.engine, loader, specs,
        batch_size=int(cfg.dataset.batch_size), max_map_size=int(cfg.selection.max_map_size),
        num_images=len(loader.dataset), description="post-hoc: every candidate on the test images",
    )
    pairs = []
    for candidate in result.candidates:
        candidate.test = scores[candidate.spec]
        pairs.append((objective_value(candidate.validation, result.objective),
                      objective_value(candidate.test, result.objective)))
    tested = {spec: objective_value(scores[spec], result.objective) for spec in specs}
    finite = {spec: value for spec, value in tested.items() if math.isfinite(value)}
    best = max(finite, key=finite.__getitem__) if finite else None
    return {
        "posthoc_spearman": spearman(pairs),
        "posthoc_regret": finite[best] - tested[result.map] if best is not None else float("nan"),
        "posthoc_best": best.label if best is not None else None,
        "posthoc_seconds": time.perf_counter() - start,
    }


@dataclass
class ValidationChoice:
    """What the selection step chose on validation data: the selection (None when off), the synthetic
    validation set (None without generators) and the calibrated thresholds."""

    selection: SelectionResult | None
    synthetic: SyntheticValidation | None
    thresholds: dict[str, Any]


def choose_on_validation(
    cfg: DictConfig,
    module: AnomalyModule,
    datamodule: Any,
    run_dir: Path,
    synthetic: SyntheticValidation | None = None,
) -> ValidationChoice:
    """Select the map on synthetic validation data, then calibrate the pixel and image thresholds on the
    validation normals (with the map just selected). Reads no test image."""
    selection, synthetic = select_on_validation(cfg, module, datamodule, Path(run_dir), synthetic)
    thresholds = module.engine.calibrate(datamodule.val_dataloader())
    return ValidationChoice(selection, synthetic, thresholds)
