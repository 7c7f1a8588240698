"""Choosing the anomaly map on validation data only: candidates, scoring, the choice.

The candidates are map specs (:class:`~anomaly_attn.maps.specs.MapSpec`: gradient attention at a layer,
or a control map, optionally smoothed and fused with the residual) and image scores
(:class:`~anomaly_attn.maps.specs.ScoreSpec`). :func:`select_maps` scores a grid of candidate specs on
held-out normal training images with synthetic anomalies pasted in (``anomaly_attn.data.synthetic``),
never on test images, and returns the best pixel map by a declared objective and the best image score
by validation image AUROC. The grid is searched in two stages, because a full product (layers ×
variants × inputs × fusions × smoothing) costs thousands of metric passes:

1. every *base* map (each attention layer × variant × input, each feature-memory layer, each control),
   unsmoothed and unfused;
2. the ``stage2_width`` best attention bases, every feature-memory base and every control, each with
   every smoothing σ and (except controls) every fusion with the residual.

The model's map engine (:class:`anomaly_attn.maps.engine.MapEngine`) renders the base maps: at every
candidate layer from one forward and one backward per batch and input (``anomaly_attn.maps.scoring``
collects and scores them). At layers where the Grad-CAM channel weight α is measured to be degenerate
(a padding artifact, ``alpha_health``), the variants built from α are not candidates. ``zsum`` fusion
candidates get their statistics from the validation NORMAL images only. The prior (``selection.prior``,
a control map) stays the choice, of the map and of the image score, unless the best candidate beats it
in at least ``selection.confidence`` of paired bootstrap resamples of the validation set
(``anomaly_attn.maps.prior_test``, with the image-score rules). The settings and the result are
``anomaly_attn.maps.selection_result``'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from torch import Tensor, nn

from anomaly_attn.common.objectives import objective_value
from anomaly_attn.maps.controls import CONTROL_MAPS
from anomaly_attn.maps.engine import MapEngine
from anomaly_attn.maps.gradient import alpha_variants
from anomaly_attn.maps.health import AlphaHealth, alpha_health
from anomaly_attn.maps.postprocess import gaussian_smooth
from anomaly_attn.maps.prior_test import PriorTest, confirmed, image_score_transfer, score_key
from anomaly_attn.maps.scoring import (
    CandidateScores,
    ValidationScorer,
    collect_bases,
    downsample,
    max_map_size_ratio,
)
from anomaly_attn.maps.selection_result import (
    Candidate,
    SelectionResult,
    SelectionSettings,
    rank_key,
)
from anomaly_attn.maps.specs import FEATURE_MEMORY, MapSpec, ScoreSpec

log = logging.getLogger(__name__)



def spatial_layers(model: nn.Module, image_size: int, in_channels: int) -> list[str]:
    """Layers whose output is a feature map larger than 1×1 (attention there can localize)."""
    from anomaly_attn.models import layer_shapes

    shapes = layer_shapes(model, image_size, in_channels)
    return [name for name, shape in shapes.items() if len(shape) == 3 and shape[1] * shape[2] > 1]


def candidate_bases(
    settings: SelectionSettings, layers: Sequence[str], fixed: Mapping[str, Any], health: Mapping[str, Any],
    memory_layers: Sequence[str] = (),
) -> tuple[list[MapSpec], list[str]]:
    """Stage-1 specs (unsmoothed, unfused) and notes on what was skipped and why; ``memory_layers``:
    layers with a feature memory (their distance maps are candidates too)."""
    notes: list[str] = []
    variants = [fixed["variant"]] if "variant" in fixed else list(settings.variants)
    inputs = [fixed["input"]] if "input" in fixed else list(settings.inputs)
    layer_list = [fixed["layer"]] if "layer" in fixed else list(layers)
    specs: list[MapSpec] = []
    if fixed.get("variant") in CONTROL_MAPS:
        return [MapSpec(source=fixed["variant"])], notes
    for layer in layer_list:
        degenerate = bool(health.get(layer, {}).get("degenerate", False))
        skipped = []
        for variant in variants:
            if degenerate and variant in alpha_variants() and "variant" not in fixed:
                skipped.append(variant)
                continue
            specs.extend(MapSpec("attention", layer, variant, source) for source in inputs)
        if skipped:
            notes.append(f"{layer}: alpha is degenerate (a padding artifact); skipped {', '.join(skipped)}")
    if "layer" not in fixed and "variant" not in fixed:
        specs.extend(MapSpec(source=name) for name in settings.controls)
        if "input" not in fixed:
            specs.extend(MapSpec(source=FEATURE_MEMORY, layer=layer) for layer in memory_layers)
    if not specs:
        raise ValueError(
            f"no candidate map is left at layer {fixed.get('layer')}: every variant there uses a degenerate "
            f"alpha; add layercam or gradcam_pp to selection.variants or choose another layer"
        )
    return specs, notes


def select_maps(
    engine: MapEngine,
    images: Tensor,
    masks: Tensor,
    labels: Tensor,
    settings: SelectionSettings,
    fixed: Mapping[str, Any],
    layers: Sequence[str],
    *,
    batch_size: int = 32,
    health_images: int = 16,
    memory_layers: Sequence[str] = (),
    generators: Sequence[str] | None = None,
) -> SelectionResult:
    """Choose the pixel map and the image score on synthetic validation data (see the module docstring).

    ``images``/``masks``/``labels``: the synthetic validation set (held-out normals, clean and with pasted
    anomalies), never test images. ``layers``: candidate layers (spatial ones). ``fixed``: keys the user
    fixed (``layer``, ``variant``, ``input``, ``fusion``, ``smoothing_sigma``, ``score``) with their values.
    ``engine`` renders the maps (its model in eval mode); its ``evaluation.fpr_limit`` bounds AUPRO.
    ``memory_layers``: layers of the engine's feature memory whose distance maps are candidates.
    ``generators``: the synthetic generator of each image (``"none"`` for clean ones), for the
    per_generator rule and the image-score transfer estimate.
    """
    start = time.perf_counter()
    normal = labels == 0
    if not bool(normal.any()) or bool(normal.all()):
        raise ValueError("synthetic validation needs both clean and anomalous images")
    health = _layer_health(engine, images[normal][:health_images], layers, fixed)
    stage1, notes = candidate_bases(settings, layers, fixed, health, memory_layers)
    scores = _score_candidates(engine, images, masks, labels, settings, fixed, stage1, batch_size)
    # A fixed spec outside stage 2 (e.g. every key fixed) is still scored as is.
    final = [c for c in scores.candidates.values() if _matches_fixed(c.spec, fixed)]
    prior_test = PriorTest(settings, labels, generators)
    best = _choose_map(scores, final, fixed, settings.objective, prior_test)
    score_candidates, best_score, values, prior_score = _choose_image_score(scores, final, best, prior_test)
    transfer = image_score_transfer(values, scores.scorer, best, prior_score, settings, labels, generators)
    seconds = time.perf_counter() - start
    log.info(
        "Selection on %d validation images (%d candidates, %.1f s): map %s, image score %s",
        len(images),
        len(scores.candidates),
        seconds,
        best.label,
        best_score.label,
    )
    return SelectionResult(
        map=best,
        score=best_score,
        objective=settings.objective,
        candidates=list(scores.candidates.values()),
        score_candidates=list(score_candidates.values()),
        alpha_health=health,
        fixed=dict(fixed),
        seconds=seconds,
        notes=notes,
        prior_tests=prior_test.records,
        image_score_transfer=transfer,
    )


def _layer_health(
    engine: MapEngine, clean: Tensor, layers: Sequence[str], fixed: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The α health (metrics.json form) of every candidate layer and a fixed one, measured on ``clean``
    validation images: a warning about a degenerate fixed layer names better ones."""
    health_layers = list(dict.fromkeys([*layers, *([fixed["layer"]] if "layer" in fixed else [])]))
    measured = alpha_health(engine.model, engine.network_input(clean.to(engine.device)), health_layers)
    return {name: _health_dict(value) for name, value in measured.items()}


def _score_candidates(
    engine: MapEngine,
    images: Tensor,
    masks: Tensor,
    labels: Tensor,
    settings: SelectionSettings,
    fixed: Mapping[str, Any],
    stage1: Sequence[MapSpec],
    batch_size: int,
) -> CandidateScores:
    """The base maps of ``stage1`` on every validation image, then the candidates of both stages scored."""
    sigma_scale = min(1.0, max_map_size_ratio(images.shape[-1], settings.max_map_size))
    bases = collect_bases(
        engine, images, stage1, batch_size, settings.max_map_size, "selection: base maps of validation images"
    )
    fpr_limit = float(engine.evaluation["fpr_limit"])
    scorer = ValidationScorer(downsample(masks.float(), settings.max_map_size).round(), labels, fpr_limit)
    normal = (labels == 0).cpu()
    reductions = [fixed["score"]] if "score" in fixed else list(settings.image_reductions)
    with CandidateScores(scorer, bases, sigma_scale, reductions, settings.topk_percent) as scores:
        scores.evaluate(stage1, 1)
        stage2 = _stage2_specs(stage1, scores.candidates, settings, fixed, bases, normal, sigma_scale)
        scores.evaluate(stage2, 2)
    return scores


def _choose_map(
    scores: CandidateScores,
    final: Sequence[Candidate],
    fixed: Mapping[str, Any],
    objective: str,
    prior_test: PriorTest,
) -> MapSpec:
    """The best of the ``final`` candidates by ``objective``, or the prior that it does not surely beat."""
    best = max(final, key=lambda c: rank_key(c.validation, objective)).spec
    prior = prior_test.prior
    if prior is None or prior not in scores.candidates or best == prior or not _matches_fixed(prior, fixed):
        return best
    ranked = {spec: scores.scorer.ranked(scores.render(spec)) for spec in (best, prior)}
    chosen = prior_test.choose(
        "map", lambda w, spec: objective_value(scores.scorer.pixel(ranked[spec], w), objective), best, prior
    )
    return scores.candidates[chosen].spec  # the scored candidate's own spec (equal to ``chosen``)


def _choose_image_score(
    scores: CandidateScores, final: Sequence[Candidate], pixel_choice: MapSpec, prior_test: PriorTest
) -> tuple[dict[str, dict[str, Any]], ScoreSpec, dict[ScoreSpec, Tensor], ScoreSpec | None]:
    """Every candidate's image AUROC (max of its map), the image scores of the ``final`` candidates with
    their AUROC, and the best of them, or the prior's max that it does not surely beat; then the
    candidates' per-image scores and the prior's score (the transfer estimate reuses them)."""
    for candidate in scores.candidates.values():
        max_score = scores.image_scores[ScoreSpec(candidate.spec, "max", scores.topk_percent)]
        candidate.validation["image_auroc"] = scores.scorer.image(max_score)
    final_specs = {c.spec for c in final}
    values = {
        score: value
        for score, value in scores.image_scores.items()
        if score.map in final_specs and score.reduction in scores.reductions
    }
    entries, best = _select_image_score(values, scores.scorer, pixel_choice, prior_test.choice_weights())
    # The prior's score in a reduction the run allows (a fixed evaluation.score=topk_mean rules out max),
    # and only when it is a candidate: the choice must be one of ``entries``.
    reduction = "max" if "max" in scores.reductions else scores.reductions[0]
    prior = None if prior_test.prior is None else ScoreSpec(prior_test.prior, reduction, scores.topk_percent)
    prior = prior if prior in values else None
    return entries, confirmed(values, scores.scorer, best, prior, prior_test), values, prior


def _stage2_specs(
    stage1: Sequence[MapSpec],
    candidates: Mapping[MapSpec, Candidate],
    settings: SelectionSettings,
    fixed: Mapping[str, Any],
    bases: Mapping[tuple[str, ...], Tensor],
    normal: Tensor,
    sigma_scale: float,
) -> list[MapSpec]:
    """Stage 2: the ``stage2_width`` best attention bases and every feature-memory base smoothed and
    fused, every control smoothed."""
    ranked = sorted(
        stage1, key=lambda s: rank_key(candidates[s].validation, settings.objective), reverse=True
    )
    fused_bases = [s for s in ranked if s.source == "attention"][: settings.stage2_width]
    fused_bases += [s for s in stage1 if s.source == FEATURE_MEMORY]
    control_bases = [s for s in stage1 if s.is_control]
    sigmas = [float(fixed["smoothing_sigma"])] if "smoothing_sigma" in fixed else settings.smoothing_sigmas
    fusions = [fixed["fusion"]] if "fusion" in fixed else settings.fusions
    specs = []
    for base in fused_bases:
        for sigma in sigmas:
            for fusion in fusions:
                spec = replace(base, smoothing_sigma=float(sigma), fusion=fusion)
                if fusion == "zsum":
                    spec = replace(spec, zsum_stats=_zsum_stats(spec, bases, normal, sigma_scale))
                specs.append(spec)
    for base in control_bases:
        for sigma in sigmas:
            specs.append(replace(base, smoothing_sigma=float(sigma)))
    return specs


def _health_dict(value: AlphaHealth) -> dict[str, Any]:
    """metrics.json form of one layer's α measurement."""
    return {
        "alpha_zero": float(value.alpha_zero),
        "alpha_circular": float(value.alpha_circular),
        "degenerate": bool(value.degenerate),
        "border_artifact": bool(value.border_artifact),
    }


def _zsum_stats(
    spec: MapSpec, bases: Mapping[tuple[str, ...], Tensor], normal: Tensor, sigma_scale: float
) -> tuple[float, float, float, float]:
    """Mean and std of the smoothed attention and of residual_l2 on validation NORMAL images only."""
    attention = gaussian_smooth(bases[spec.base_key], spec.smoothing_sigma * sigma_scale)[normal]
    residual = bases[("residual_l2",)][normal]
    return (float(attention.mean()), float(attention.std()), float(residual.mean()), float(residual.std()))


def _matches_fixed(spec: MapSpec, fixed: Mapping[str, Any]) -> bool:
    if "variant" in fixed and fixed["variant"] in CONTROL_MAPS:
        return spec.source == fixed["variant"]
    for key in ("layer", "variant", "input", "fusion"):
        if key in fixed and (spec.source != "attention" or getattr(spec, key) != fixed[key]):
            return False
    return not ("smoothing_sigma" in fixed and spec.smoothing_sigma != float(fixed["smoothing_sigma"]))


def _select_image_score(
    values: Mapping[ScoreSpec, Tensor], scorer: ValidationScorer, pixel_choice: MapSpec,
    weights: np.ndarray | None = None,
) -> tuple[dict[str, dict[str, Any]], ScoreSpec]:
    """Every image score's validation AUROC and the best one (ties: a score of the chosen pixel map);
    ``weights``: choose by the AUROC of the weighted images (split_half: one half), reported too."""
    entries: dict[str, dict[str, Any]] = {}
    best: tuple[tuple[float, int], ScoreSpec] | None = None
    for score, scores in values.items():
        validation = {"image_auroc": scorer.image(scores)}
        if weights is not None:
            validation["image_auroc_choice_half"] = scorer.image(scores, weights)
        entries[score.label] = {"label": score.label, **score.to_dict(), "validation": validation}
        key = score_key(validation["image_auroc_choice_half" if weights is not None else "image_auroc"],
                         score, pixel_choice)
        if best is None or key > best[0]:
            best = (key, score)
    if best is None:
        raise ValueError("no image-score candidate: selection.image_reductions is empty")
    return entries, best[1]

