"""Choosing the anomaly map on validation data only: candidates, scoring, the choice.

The candidates are map specs (:class:`~anomaly_attn.maps.specs.MapSpec`: gradient attention at a layer,
or a control map, optionally smoothed and fused with the residual) and image scores
(:class:`~anomaly_attn.maps.specs.ScoreSpec`). :func:`select_maps` scores a grid of candidate specs on
held-out normal training images with synthetic anomalies pasted in (``anomaly_attn.data.synthetic``),
never on test images, and returns the best pixel map by a declared objective and the best image score
by validation image AUROC. The grid is searched in two stages, because a full product (layers ×
variants × inputs × fusions × smoothing) costs thousands of metric passes:

1. every *base* map (each attention layer × variant × input, each control), unsmoothed and unfused;
2. the ``stage2_width`` best attention bases and every control, each with every smoothing σ and (for
   attention) every fusion with the residual.

The model's map engine (:class:`anomaly_attn.maps.engine.MapEngine`) renders the base maps: at every
candidate layer from one forward and one backward per batch and input. At layers where the Grad-CAM
channel weight α is measured to be degenerate (a padding artifact, ``alpha_health``), the variants built
from α are not candidates. ``zsum`` fusion candidates get their statistics from the validation NORMAL
images only.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_attn.common.objectives import OBJECTIVES, objective_value
from anomaly_attn.common.progress import progress
from anomaly_attn.maps.controls import CONTROL_MAPS
from anomaly_attn.maps.engine import MapEngine
from anomaly_attn.maps.gradient import ATTENTION_INPUTS, alpha_variants, list_variants
from anomaly_attn.maps.health import AlphaHealth, alpha_health
from anomaly_attn.maps.postprocess import IMAGE_SCORE_REDUCTIONS, gaussian_smooth, image_scores
from anomaly_attn.maps.specs import FUSIONS, MapSpec, ScoreSpec, render
from anomaly_attn.metrics.ranked import MaskSet, RankedMap, weighted_auroc

log = logging.getLogger(__name__)

# Keys a user can fix (command line, or selection.fix); selection then chooses only the rest.
FIXABLE_KEYS = ("layer", "variant", "input", "fusion", "smoothing_sigma", "score")
# Two objective values closer than this count as a tie (then the tie-break metric decides).
TIE_TOLERANCE = 1e-3
# Threads that score candidate maps next to the one rendering them (at most torch's intra-op threads).
_MAX_SCORING_THREADS = 4


# ----------------------------------------------------------------------------------------- selection
@dataclass
class SelectionSettings:
    """``selection`` config keys that define the candidate grid and the objective (conf/config.yaml)."""

    map: str = "auto"
    objective: str = "mean_auroc_aupro"
    layers: list[str] | None = None
    variants: list[str] = field(default_factory=lambda: ["seed", "gradcam_abs", "gradcam_pp", "layercam"])
    inputs: list[str] = field(default_factory=lambda: ["residual", "image"])
    fusions: list[str] = field(default_factory=lambda: ["none", "product", "zsum"])
    smoothing_sigmas: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0])
    controls: list[str] = field(default_factory=lambda: ["residual_l2", "residual_ssim", "residual_highpass"])
    image_reductions: list[str] = field(default_factory=lambda: ["max", "topk_mean"])
    topk_percent: float = 1.0
    stage2_width: int = 6
    prior: str | None = "residual_l2"
    confidence: float = 0.95
    bootstrap: int = 100
    max_map_size: int = 128
    posthoc_test: bool = False
    fix: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, selection: Mapping[str, Any]) -> SelectionSettings:
        known = {k: v for k, v in selection.items() if k in cls.__dataclass_fields__}
        settings = cls(**known)
        settings.validate()
        return settings

    def validate(self, layer_names: Sequence[str] | None = None) -> None:
        """Refuse unknown names before any training, listing the valid ones."""
        if self.map not in ("auto", "fixed"):
            raise ValueError(f"selection.map={self.map!r}; valid: auto (choose on validation data), fixed")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"selection.objective={self.objective!r}; valid: {list(OBJECTIVES)}")
        _check_names("selection.variants", self.variants, list_variants())
        _check_names("selection.inputs", self.inputs, ATTENTION_INPUTS)
        _check_names("selection.fusions", self.fusions, FUSIONS)
        _check_names("selection.controls", self.controls, CONTROL_MAPS)
        _check_names("selection.image_reductions", self.image_reductions, IMAGE_SCORE_REDUCTIONS)
        _check_names("selection.fix", self.fix, FIXABLE_KEYS)
        if self.layers is not None and layer_names is not None:
            _check_names("selection.layers", self.layers, layer_names)
        if any(float(s) < 0 for s in self.smoothing_sigmas) or not self.smoothing_sigmas:
            raise ValueError(
                f"selection.smoothing_sigmas={self.smoothing_sigmas}: need values >= 0 (0: none)"
            )
        if self.prior is not None and self.prior not in CONTROL_MAPS:
            raise ValueError(f"selection.prior={self.prior!r}; valid: null or one of {list(CONTROL_MAPS)}")
        if not 0.5 <= self.confidence < 1.0 or self.bootstrap < 10:
            raise ValueError("selection.confidence must be in [0.5, 1) and selection.bootstrap >= 10")
        if self.stage2_width < 1 or self.max_map_size < 8:
            raise ValueError("selection.stage2_width must be >= 1 and selection.max_map_size >= 8")


def _check_names(key: str, names: Iterable[str], valid: Iterable[str]) -> None:
    valid = list(valid)
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ValueError(f"{key}: unknown {unknown}; valid: {valid}")


@dataclass
class Candidate:
    """One scored candidate: its spec and validation (and, post hoc, test) metrics."""

    spec: MapSpec
    stage: int
    validation: dict[str, float]
    test: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        entry = {
            "label": self.spec.label,
            "family": self.spec.family,
            "stage": self.stage,
            "spec": self.spec.to_dict(),
            "validation": self.validation,
        }
        if self.test is not None:
            entry["posthoc_test"] = self.test
        return entry


@dataclass
class SelectionResult:
    """The chosen pixel map and image score, every candidate's validation scores, and the α health."""

    map: MapSpec
    score: ScoreSpec
    objective: str
    candidates: list[Candidate]
    score_candidates: list[dict[str, Any]]
    alpha_health: dict[str, dict[str, Any]]
    fixed: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)
    prior_tests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def candidate(self, spec: MapSpec) -> Candidate:
        return next(c for c in self.candidates if c.spec == spec)

    def summary(self) -> dict[str, Any]:
        """The ``selection`` block of metrics.json."""
        chosen = self.candidate(self.map)
        score_entry = next(e for e in self.score_candidates if e["label"] == self.score.label)
        return {
            "objective": self.objective,
            "tie_break": _tie_break(self.objective),
            "fixed": self.fixed,
            "chosen": {
                "label": self.map.label,
                "family": self.map.family,
                "spec": self.map.to_dict(),
                "validation": chosen.validation,
            },
            "chosen_image_score": {
                "label": self.score.label,
                **self.score.to_dict(),
                "validation": score_entry["validation"],
            },
            "candidates": [c.to_dict() for c in self.candidates],
            "image_score_candidates": self.score_candidates,
            "alpha_health": self.alpha_health,
            "prior": self.prior_tests,
            "notes": self.notes,
            "seconds": self.seconds,
        }


def _tie_break(objective: str) -> str:
    return "pixel_aupro" if objective == "pixel_auroc" else "pixel_auroc"


def _rank_key(metrics: Mapping[str, float], objective: str) -> tuple[float, float]:
    """Sort key (higher is better): the objective on a 1e-3 grid, then the tie-break metric."""
    value = objective_value(metrics, objective)
    value = -math.inf if not math.isfinite(value) else math.floor(value / TIE_TOLERANCE)
    tie = metrics.get(_tie_break(objective), float("nan"))
    return value, (tie if math.isfinite(tie) else -math.inf)


class ValidationScorer:
    """Exact pixel and image metrics of candidate maps against one fixed labelled set, with optional
    per-image weights (a bootstrap resample); the masks' defect regions are labelled once."""

    def __init__(self, masks: Tensor, labels: Tensor, fpr_limit: float) -> None:
        self.mask_set = MaskSet(masks)
        self.labels = labels.cpu().numpy().astype(bool)
        self.fpr_limit = fpr_limit

    def ranked(self, maps: Tensor) -> RankedMap:
        return RankedMap(maps, self.mask_set)

    def pixel(self, maps: Tensor | RankedMap, weights: np.ndarray | None = None) -> dict[str, float]:
        ranked = maps if isinstance(maps, RankedMap) else self.ranked(maps)
        return ranked.metrics(weights, self.fpr_limit)

    def image(self, scores: Tensor, weights: np.ndarray | None = None) -> float:
        """Image AUROC (ties count half), each image counted ``weights[i]`` times."""
        return weighted_auroc(scores.detach().cpu().numpy(), self.labels, weights)


def _selection_size(shape: Sequence[int], max_map_size: int) -> tuple[int, int]:
    """(h, w) of ``shape``'s last two dimensions scaled so that the longer side is ≤ ``max_map_size``."""
    height, width = int(shape[-2]), int(shape[-1])
    scale = min(1.0, max_map_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _downsample(maps: Tensor, max_map_size: int) -> Tensor:
    size = _selection_size(maps.shape, max_map_size)
    return maps if tuple(maps.shape[-2:]) == size else F.adaptive_avg_pool2d(maps, size)


def spatial_layers(model: nn.Module, image_size: int, in_channels: int) -> list[str]:
    """Layers whose output is a feature map larger than 1×1 (attention there can localize)."""
    from anomaly_attn.models import layer_shapes

    shapes = layer_shapes(model, image_size, in_channels)
    return [name for name, shape in shapes.items() if len(shape) == 3 and shape[1] * shape[2] > 1]


def candidate_bases(
    settings: SelectionSettings, layers: Sequence[str], fixed: Mapping[str, Any], health: Mapping[str, Any]
) -> tuple[list[MapSpec], list[str]]:
    """Stage-1 specs (unsmoothed, unfused) and notes on what was skipped and why."""
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
    if not specs:
        raise ValueError(
            f"no candidate map is left at layer {fixed.get('layer')}: every variant there uses a degenerate "
            f"alpha; add layercam or gradcam_pp to selection.variants or choose another layer"
        )
    return specs, notes


@torch.no_grad()
def _collect_bases(
    engine: MapEngine, images: Tensor, specs: Sequence[MapSpec], batch_size: int, max_map_size: int,
    description: str,
) -> dict[tuple[str, ...], Tensor]:
    """Base maps of ``specs`` (plus residual_l2) over all ``images``, downsampled to ``max_map_size``
    (``description``: what the progress bar says)."""
    attention_keys = {spec.base_key for spec in specs if spec.source == "attention"}
    controls = {spec.source for spec in specs if spec.source != "attention"} | {"residual_l2"}
    chunks: dict[tuple[str, ...], list[Tensor]] = {}
    starts = range(0, len(images), batch_size)
    with progress(description, len(starts)) as advance:
        for start in starts:
            batch = images[start : start + batch_size].to(engine.device)
            network_input, reconstruction = engine.reconstruct(batch)
            bases = engine.base_maps(
                batch, reconstruction, network_input, attention_keys, controls,
                attention_size=_selection_size(batch.shape, max_map_size),
            )
            for key, value in bases.items():
                chunks.setdefault(key, []).append(_downsample(value.float(), max_map_size).cpu())
            advance(1)
    return {key: torch.cat(values) for key, values in chunks.items()}


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
) -> SelectionResult:
    """Choose the pixel map and the image score on synthetic validation data (see the module docstring).

    ``images``/``masks``/``labels``: the synthetic validation set (held-out normals, clean and with pasted
    anomalies), never test images. ``layers``: candidate layers (spatial ones). ``fixed``: keys the user
    fixed (``layer``, ``variant``, ``input``, ``fusion``, ``smoothing_sigma``, ``score``) with their values.
    ``engine`` renders the maps (its model in eval mode); its ``evaluation.fpr_limit`` bounds AUPRO.
    """
    start = time.perf_counter()
    normal = labels == 0
    if not bool(normal.any()) or bool(normal.all()):
        raise ValueError("synthetic validation needs both clean and anomalous images")
    sigma_scale = min(1.0, max_map_size_ratio(images.shape[-1], settings.max_map_size))

    clean = images[normal][:health_images].to(engine.device)
    # Every candidate layer (and a fixed one): a warning about a degenerate fixed layer names better ones.
    health_layers = list(dict.fromkeys([*layers, *([fixed["layer"]] if "layer" in fixed else [])]))
    measured = alpha_health(engine.model, engine.network_input(clean), health_layers)
    health = {name: _health_dict(value) for name, value in measured.items()}

    stage1, notes = candidate_bases(settings, layers, fixed, health)
    bases = _collect_bases(
        engine, images, stage1, batch_size, settings.max_map_size, "selection: base maps of validation images"
    )
    fpr_limit = float(engine.evaluation["fpr_limit"])
    scorer = ValidationScorer(_downsample(masks.float(), settings.max_map_size).round(), labels, fpr_limit)
    normal_cpu = normal.cpu()
    candidates: dict[MapSpec, Candidate] = {}
    # Per candidate and reduction, the validation image scores (the maps themselves are not kept).
    image_score_values: dict[ScoreSpec, Tensor] = {}
    reductions = [fixed["score"]] if "score" in fixed else list(settings.image_reductions)

    workers = min(torch.get_num_threads(), _MAX_SCORING_THREADS)
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None

    def evaluate_all(specs: Iterable[MapSpec], stage: int) -> None:
        """Score each new spec once, in order. The exact pixel metrics (numpy sorts and cumulative sums,
        which release the GIL) run on ``workers`` threads while the next maps render, so selection uses
        every core torch may use; at most ``2·workers`` maps wait. The numbers do not depend on it."""
        pending: deque[tuple[MapSpec, Any]] = deque()

        new_specs = [spec for spec in dict.fromkeys(specs) if spec not in candidates]
        with progress(f"selection: stage {stage} candidate maps", len(new_specs)) as advance:

            def collect(limit: int) -> None:
                while len(pending) > limit:
                    done, future = pending.popleft()
                    candidates[done] = Candidate(done, stage, future.result())
                    advance(1)

            for spec in new_specs:
                maps = render(spec, bases, sigma_scale)
                if pool is None:
                    candidates[spec] = Candidate(spec, stage, scorer.pixel(maps))
                    advance(1)
                else:
                    pending.append((spec, pool.submit(scorer.pixel, maps)))
                for reduction in dict.fromkeys([*reductions, "max"]):
                    score = ScoreSpec(spec, reduction, settings.topk_percent)
                    image_score_values[score] = score.scores(maps)
                collect(2 * workers)
            collect(0)

    try:
        evaluate_all(stage1, 1)
        stage2 = _stage2_specs(stage1, candidates, settings, fixed, bases, normal_cpu, sigma_scale)
        evaluate_all(stage2, 2)
    finally:
        if pool is not None:
            pool.shutdown()
    # A fixed spec outside stage 2 (e.g. every key fixed) is still scored as is.
    final = [c for c in candidates.values() if _matches_fixed(c.spec, fixed)]
    best = max(final, key=lambda c: _rank_key(c.validation, settings.objective))
    prior_tests: dict[str, dict[str, Any]] = {}
    rng = np.random.default_rng(0)
    groups = _bootstrap_groups(labels)
    prior = MapSpec(settings.prior) if settings.prior else None
    if prior is not None and prior in candidates and best.spec != prior and _matches_fixed(prior, fixed):
        ranked = {spec: scorer.ranked(render(spec, bases, sigma_scale)) for spec in (best.spec, prior)}
        win_rate = _bootstrap_win_rate(
            lambda w, spec: objective_value(scorer.pixel(ranked[spec], w), settings.objective),
            best.spec, prior, groups, settings.bootstrap, rng,
        )
        kept = win_rate < settings.confidence
        prior_tests["map"] = {"prior": prior.label, "best": best.spec.label, "win_rate": win_rate,
                              "confidence": settings.confidence, "kept_prior": kept}
        if kept:
            best = candidates[prior]

    for candidate in candidates.values():
        max_score = image_score_values[ScoreSpec(candidate.spec, "max", settings.topk_percent)]
        candidate.validation["image_auroc"] = scorer.image(max_score)
    final_specs = {c.spec for c in final}
    score_candidates, best_score = _select_image_score(
        {s: v for s, v in image_score_values.items() if s.map in final_specs and s.reduction in reductions},
        scorer,
        best.spec,
    )
    prior_score = ScoreSpec(prior, "max", settings.topk_percent) if prior is not None else None
    if prior_score is not None and prior_score in image_score_values and best_score != prior_score:
        win_rate = _bootstrap_win_rate(
            lambda w, score: scorer.image(image_score_values[score], w),
            best_score, prior_score, groups, settings.bootstrap, rng,
        )
        kept = win_rate < settings.confidence
        prior_tests["image_score"] = {"prior": prior_score.label, "best": best_score.label,
                                      "win_rate": win_rate, "confidence": settings.confidence,
                                      "kept_prior": kept}
        if kept:
            best_score = prior_score
    seconds = time.perf_counter() - start
    log.info(
        "Selection on %d validation images (%d candidates, %.1f s): map %s, image score %s",
        len(images),
        len(candidates),
        seconds,
        best.spec.label,
        best_score.label,
    )
    return SelectionResult(
        map=best.spec,
        score=best_score,
        objective=settings.objective,
        candidates=list(candidates.values()),
        score_candidates=list(score_candidates.values()),
        alpha_health=health,
        fixed=dict(fixed),
        seconds=seconds,
        notes=notes,
        prior_tests=prior_tests,
    )


def _stage2_specs(
    stage1: Sequence[MapSpec],
    candidates: Mapping[MapSpec, Candidate],
    settings: SelectionSettings,
    fixed: Mapping[str, Any],
    bases: Mapping[tuple[str, ...], Tensor],
    normal: Tensor,
    sigma_scale: float,
) -> list[MapSpec]:
    """Stage 2: the ``stage2_width`` best attention bases smoothed and fused, every control smoothed."""
    ranked = sorted(
        stage1, key=lambda s: _rank_key(candidates[s].validation, settings.objective), reverse=True
    )
    attention_top = [s for s in ranked if s.source == "attention"][: settings.stage2_width]
    control_bases = [s for s in stage1 if s.source != "attention"]
    sigmas = [float(fixed["smoothing_sigma"])] if "smoothing_sigma" in fixed else settings.smoothing_sigmas
    fusions = [fixed["fusion"]] if "fusion" in fixed else settings.fusions
    specs = []
    for base in attention_top:
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
) -> float:
    """Fraction of paired bootstrap resamples (over ``groups``) in which ``candidate`` scores strictly
    higher than ``reference``: how sure the validation set is that the candidate is better."""
    count = int(groups.max()) + 1
    wins = 0
    for _ in range(resamples):
        draws = np.bincount(rng.integers(count, size=count), minlength=count).astype(np.float64)
        weights = draws[groups]
        wins += score(weights, candidate) > score(weights, reference)
    return wins / resamples


def max_map_size_ratio(image_side: int, max_map_size: int) -> float:
    """How much smaller (≤ 1) selection's maps are than the input image."""
    return min(1.0, max_map_size / float(image_side))


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
    values: Mapping[ScoreSpec, Tensor], scorer: ValidationScorer, pixel_choice: MapSpec
) -> tuple[dict[str, dict[str, Any]], ScoreSpec]:
    """Every image score's validation AUROC and the best one (ties: a score of the chosen pixel map)."""
    entries: dict[str, dict[str, Any]] = {}
    best: tuple[tuple[float, int], ScoreSpec] | None = None
    for score, scores in values.items():
        value = scorer.image(scores)
        entries[score.label] = {"label": score.label, **score.to_dict(), "validation": {"image_auroc": value}}
        key = (
            math.floor(value / TIE_TOLERANCE) if math.isfinite(value) else -math.inf,
            int(score.map == pixel_choice),
        )
        if best is None or key > best[0]:
            best = (key, score)
    if best is None:
        raise ValueError("no image-score candidate: selection.image_reductions is empty")
    return entries, best[1]


def score_specs_on(
    engine: MapEngine,
    images: Tensor,
    masks: Tensor,
    labels: Tensor,
    specs: Sequence[MapSpec],
    *,
    batch_size: int = 32,
    max_map_size: int = 128,
    description: str = "scoring: base maps",
) -> dict[MapSpec, dict[str, float]]:
    """Pixel AUROC/AUPRO and image AUROC (max) of ``specs`` on a labelled set, for post-hoc analysis
    (``description``: what the progress bar says)."""
    bases_of = [replace(s, fusion="none", smoothing_sigma=0.0, zsum_stats=None) for s in specs]
    bases = _collect_bases(engine, images, bases_of, batch_size, max_map_size, description)
    fpr_limit = float(engine.evaluation["fpr_limit"])
    scorer = ValidationScorer(_downsample(masks.float(), max_map_size).round(), labels, fpr_limit)
    sigma_scale = max_map_size_ratio(images.shape[-1], max_map_size)
    results = {}
    for spec in specs:
        maps = render(spec, bases, sigma_scale)
        results[spec] = {**scorer.pixel(maps), "image_auroc": scorer.image(image_scores(maps, "max"))}
    return results


def spearman(pairs: Sequence[tuple[float, float]]) -> float:
    """Spearman rank correlation of (validation, test) pairs; nan for fewer than 3 finite pairs."""
    from scipy.stats import spearmanr

    finite = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    if len(finite) < 3:
        return float("nan")
    value = spearmanr(np.array(finite)[:, 0], np.array(finite)[:, 1]).statistic
    return float(value)
