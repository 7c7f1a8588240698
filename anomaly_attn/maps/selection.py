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
in at least ``selection.confidence`` of paired bootstrap resamples of the validation set. The settings
and the result are ``anomaly_attn.maps.selection_result``'s.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
from torch import Tensor, nn

from anomaly_attn.common.objectives import objective_value
from anomaly_attn.maps.controls import CONTROL_MAPS
from anomaly_attn.maps.engine import MapEngine
from anomaly_attn.maps.gradient import alpha_variants
from anomaly_attn.maps.health import AlphaHealth, alpha_health
from anomaly_attn.maps.postprocess import gaussian_smooth
from anomaly_attn.maps.scoring import (
    CandidateScores,
    ValidationScorer,
    collect_bases,
    downsample,
    max_map_size_ratio,
)
from anomaly_attn.maps.selection_result import (
    IMAGE_SCORE_CONFIRM,
    TIE_TOLERANCE,
    Candidate,
    SelectionResult,
    SelectionSettings,
    rank_key,
)
from anomaly_attn.maps.specs import FEATURE_MEMORY, MapSpec, ScoreSpec

log = logging.getLogger(__name__)

# The prior and the best candidate: two map specs, or two image scores.
_Choice = TypeVar("_Choice", MapSpec, ScoreSpec)


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
    prior_test = _PriorTest(settings, labels, generators)
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


class _PriorTest:
    """The bootstrap test of the best candidate against the prior (``selection.prior``): the prior stays
    unless the best scores higher in at least ``confidence`` of ``bootstrap`` paired resamples. The map's
    and the image score's tests draw from one random stream (seed 0), in that order; each test's record
    is in ``records`` (metrics.json's ``prior``)."""

    def __init__(
        self,
        settings: SelectionSettings,
        labels: Tensor,
        generators: Sequence[str] | None = None,
        units: np.ndarray | None = None,
        rule: str | None = None,
    ) -> None:
        """``generators``: the generator of each validation image (``per_generator``); ``units``: only
        these resampling units take part (the rest weigh 0; the transfer estimate's folds); ``rule``: the
        image-score rule, ``selection.image_score_confirm`` by default."""
        rule = settings.image_score_confirm if rule is None else rule
        self.prior = MapSpec(settings.prior) if settings.prior else None
        self.resamples, self.confidence = settings.bootstrap, settings.confidence
        self.groups = _bootstrap_groups(labels)
        self.rng = np.random.default_rng(0)
        self.records: dict[str, dict[str, Any]] = {}
        self.restricted = units is not None
        self.units = np.arange(int(self.groups.max()) + 1) if units is None else np.sort(np.asarray(units))
        # split_half: the image score is chosen on one half of the resampling units and tested against
        # the prior on the other (a seeded split, its own stream), so the test does not see the images
        # that made the best look best. The halves keep clean/anomalous pairs together.
        order = np.random.default_rng(1).permutation(len(self.units))
        self.split_half = rule == "split_half" and len(self.units) >= 4
        half = len(self.units) // 2 if self.split_half else len(self.units)
        self.choose_units = np.sort(self.units[order[:half]]) if self.split_half else self.units
        self.confirm_units = np.sort(self.units[order[half:]]) if self.split_half else self.units
        # per_generator: the images each generator's anomalies are judged on (with every clean image).
        self.generator_weights = (
            _generator_weights(labels, generators, self.groups, self.units)
            if rule == "per_generator" and generators is not None
            else {}
        )

    def choice_weights(self) -> np.ndarray | None:
        """Per image, 1 on the units the image score is chosen on and 0 elsewhere (``None``: all)."""
        if not (self.split_half or self.restricted):
            return None
        return np.isin(self.groups, self.choose_units).astype(np.float64)

    def choose(
        self, name: str, score: Callable[[np.ndarray, _Choice], float], best: _Choice, prior: _Choice,
        image_score: bool = False,
    ) -> _Choice:
        """``best``, or ``prior`` where the validation set is not sure enough that ``best`` scores higher
        (``score(weights, choice)``: the choice's score with each image counted ``weights[i]`` times).
        ``image_score``: the image score's test, which split_half resamples on the confirmation half only
        and per_generator also requires per generator."""
        units = self.confirm_units if image_score and self.split_half else self.units
        win_rate = _bootstrap_win_rate(score, best, prior, self.groups, self.resamples, self.rng, units)
        kept = win_rate < self.confidence
        record = {"prior": prior.label, "best": best.label, "win_rate": win_rate,
                  "confidence": self.confidence, "kept_prior": kept}
        if image_score and self.split_half:
            record["tested_on"] = "the half of the validation images it was not chosen on"
        if image_score and self.generator_weights:
            per = {g: (score(w, best), score(w, prior)) for g, w in self.generator_weights.items()}
            record["per_generator"] = {g: {"best": b, "prior": p} for g, (b, p) in per.items()}
            kept = kept or any(b < p for b, p in per.values())
            record["kept_prior"] = kept
        self.records[name] = record
        return prior if kept else best


def _choose_map(
    scores: CandidateScores,
    final: Sequence[Candidate],
    fixed: Mapping[str, Any],
    objective: str,
    prior_test: _PriorTest,
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
    scores: CandidateScores, final: Sequence[Candidate], pixel_choice: MapSpec, prior_test: _PriorTest
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
    return entries, _confirmed(values, scores.scorer, best, prior, prior_test), values, prior


def _confirmed(
    values: Mapping[ScoreSpec, Tensor], scorer: ValidationScorer, best: ScoreSpec, prior: ScoreSpec | None,
    prior_test: _PriorTest,
) -> ScoreSpec:
    """``best``, or ``prior`` where ``prior_test``'s image-score rule does not confirm it."""
    if prior is None or best == prior:
        return best
    return prior_test.choose(
        "image_score", lambda w, score: scorer.image(values[score], w), best, prior, image_score=True
    )


def image_score_transfer(
    values: Mapping[ScoreSpec, Tensor],
    scorer: ValidationScorer,
    pixel_choice: MapSpec,
    prior: ScoreSpec | None,
    settings: SelectionSettings,
    labels: Tensor,
    generators: Sequence[str] | None,
) -> dict[str, Any]:
    """How each image-score rule (``IMAGE_SCORE_CONFIRM``) transfers to a kind of defect it has not
    seen, on validation data only: for each generator, the rule chooses on the images of the other
    generators and its choice is scored against the prior on the held-out generator's images (clean and
    anomalous pairs). ``gain``: the choice's image AUROC minus the prior's there (0 when the prior was
    kept); per rule the mean and the worst over generators. Real defects are a kind no generator made,
    so this is the validation set's estimate of which rule to trust on them. Empty without a prior, with
    fewer than two generators or unpaired images."""
    groups = _bootstrap_groups(labels)
    unit_generators = _unit_generators(labels, generators, groups)
    if prior is None or unit_generators is None or len(set(unit_generators)) < 2:
        return {}
    rules: dict[str, Any] = {}
    for rule in IMAGE_SCORE_CONFIRM:
        folds = {}
        for held_out in sorted(set(unit_generators)):
            inside = unit_generators == held_out
            test = _PriorTest(settings, labels, generators, units=np.flatnonzero(~inside), rule=rule)
            best = _best_image_score(values, scorer, pixel_choice, test.choice_weights())
            chosen = _confirmed(values, scorer, best, prior, test)
            weights = np.isin(groups, np.flatnonzero(inside)).astype(np.float64)
            gain = scorer.image(values[chosen], weights) - scorer.image(values[prior], weights)
            folds[held_out] = {"chosen": chosen.label, "gain": gain}
        gains = [fold["gain"] for fold in folds.values()]
        rules[rule] = {"gain_mean": float(np.mean(gains)), "gain_min": float(np.min(gains)), "folds": folds}
    return {"prior": prior.label, "held_out": "each generator in turn; the rule chooses on the others",
            "rules": rules}


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


def _bootstrap_groups(labels: Tensor) -> np.ndarray:
    """Resampling units: a clean image and its anomalous copy (the synthetic set's first and second
    halves) are drawn together; any other layout resamples single images."""
    values = labels.cpu().numpy()
    half = len(values) // 2
    if len(values) % 2 == 0 and not values[:half].any() and values[half:].all():
        return np.r_[np.arange(half), np.arange(half)]
    return np.arange(len(values))


def _bootstrap_win_rate(
    score: Callable[[np.ndarray, Any], float],
    candidate: Any,
    reference: Any,
    groups: np.ndarray,
    resamples: int,
    rng: np.random.Generator,
    units: np.ndarray | None = None,
) -> float:
    """Fraction of paired bootstrap resamples (over ``groups``; ``units``: only these groups, the rest
    weigh 0) in which ``candidate`` scores strictly higher than ``reference``: how sure the validation
    set is that the candidate is better."""
    count = int(groups.max()) + 1
    units = np.arange(count) if units is None else np.asarray(units)
    wins = 0
    for _ in range(resamples):
        drawn = units[rng.integers(len(units), size=len(units))]
        draws = np.bincount(drawn, minlength=count).astype(np.float64)
        weights = draws[groups]
        wins += score(weights, candidate) > score(weights, reference)
    return wins / resamples


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
        key = _score_key(validation["image_auroc_choice_half" if weights is not None else "image_auroc"],
                         score, pixel_choice)
        if best is None or key > best[0]:
            best = (key, score)
    if best is None:
        raise ValueError("no image-score candidate: selection.image_reductions is empty")
    return entries, best[1]


def _best_image_score(
    values: Mapping[ScoreSpec, Tensor], scorer: ValidationScorer, pixel_choice: MapSpec,
    weights: np.ndarray | None,
) -> ScoreSpec:
    """The best image score by the AUROC of the ``weights``-weighted images (as _select_image_score)."""
    return max(values, key=lambda s: _score_key(scorer.image(values[s], weights), s, pixel_choice))


def _score_key(value: float, score: ScoreSpec, pixel_choice: MapSpec) -> tuple[float, int]:
    """Sort key of an image score: its AUROC on the tie grid, then whether it is the pixel map's."""
    return (math.floor(value / TIE_TOLERANCE) if math.isfinite(value) else -math.inf,
            int(score.map == pixel_choice))


def _unit_generators(
    labels: Tensor, generators: Sequence[str] | None, groups: np.ndarray
) -> np.ndarray | None:
    """The generator of each resampling unit's anomalous image (paired synthetic sets only, else None)."""
    values = labels.cpu().numpy()
    if generators is None or len(generators) != len(values) or groups.max() + 1 != len(values) // 2:
        return None
    return np.asarray([str(g) for g in generators], dtype=object)[len(values) // 2:]


def _generator_weights(
    labels: Tensor, generators: Sequence[str] | None, groups: np.ndarray, units: np.ndarray
) -> dict[str, np.ndarray]:
    """Per generator (two or more among ``units``' anomalies): weight 1 on the clean images of ``units``
    and on that generator's anomalous images among them, 0 elsewhere."""
    values = labels.cpu().numpy()
    if generators is None or len(generators) != len(values):
        return {}
    names = np.asarray([str(g) for g in generators], dtype=object)
    inside = np.isin(groups, units)
    anomalous = inside & (values == 1)
    kinds = sorted(set(names[anomalous]))
    if len(kinds) < 2:
        return {}
    clean = inside & (values == 0)
    return {kind: (clean | (anomalous & (names == kind))).astype(np.float64) for kind in kinds}
