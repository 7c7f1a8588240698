"""What map selection takes and gives: :class:`SelectionSettings` (the ``selection`` config: the candidate
grid and the objective), :class:`Candidate` and :class:`SelectionResult` (the ``selection`` block of
metrics.json), and how candidates rank (:func:`rank_key`). Selection itself is
:func:`anomaly_attn.maps.selection.select_maps`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from anomaly_attn.common.objectives import OBJECTIVES, objective_value
from anomaly_attn.maps.controls import CONTROL_MAPS
from anomaly_attn.maps.feature_memory import MAX_DISTANCES
from anomaly_attn.maps.gradient import ATTENTION_INPUTS, list_variants
from anomaly_attn.maps.postprocess import IMAGE_SCORE_REDUCTIONS
from anomaly_attn.maps.specs import FUSIONS, MapSpec, ScoreSpec

# Keys a user can fix (command line, or selection.fix); selection then chooses only the rest.
FIXABLE_KEYS = ("layer", "variant", "input", "fusion", "smoothing_sigma", "score")
# Two objective values closer than this count as a tie (then the tie-break metric decides).
TIE_TOLERANCE = 1e-3


# selection.feature_memory: layers ([] off, auto, or a list), patches kept per layer, the bound on one
# image's distances at a layer, neighbourhood pool, seed of the patch draw (conf/config.yaml says the same).
MEMORY_DEFAULTS: dict[str, Any] = {
    "layers": "auto", "patches": 16384, "max_distances": MAX_DISTANCES, "pool": 3, "seed": 0,
}

IMAGE_SCORE_CONFIRM = ("same", "split_half", "per_generator")
"""``selection.image_score_confirm``: the image score is chosen and tested against the prior on the same
validation images; or chosen on one half of them and tested on the other (no winner's curse); or chosen
and tested on all of them and, besides, no worse than the prior on any one generator's anomalies (a score
that wins on one kind of synthetic defect and loses on another is not trusted on real defects)."""


@dataclass
class SelectionSettings:
    """``selection`` config keys that define the candidate grid and the objective (conf/config.yaml)."""

    map: str = "auto"
    objective: str = "mean_auroc_aupro"
    layers: list[str] | None = None
    variants: list[str] = field(
        default_factory=lambda: ["mean_abs_cam", "gradcam_abs", "gradcam_pp", "layercam"]
    )
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
    image_score_confirm: str = "same"
    max_map_size: int = 128
    posthoc_test: bool = False
    fix: list[str] = field(default_factory=list)
    feature_memory: dict[str, Any] = field(default_factory=dict)

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
        if self.image_score_confirm not in IMAGE_SCORE_CONFIRM:
            raise ValueError(f"selection.image_score_confirm={self.image_score_confirm!r}; valid: "
                             f"{', '.join(IMAGE_SCORE_CONFIRM)}")
        if not 0.5 <= self.confidence < 1.0 or self.bootstrap < 10:
            raise ValueError("selection.confidence must be in [0.5, 1) and selection.bootstrap >= 10")
        memory = {**MEMORY_DEFAULTS, **self.feature_memory}
        unknown = sorted(set(memory) - set(MEMORY_DEFAULTS))
        if unknown:
            raise ValueError(f"selection.feature_memory: unknown {unknown}; valid: {sorted(MEMORY_DEFAULTS)}")
        layers = memory["layers"]
        if not (layers == "auto" or isinstance(layers, list | tuple)):
            raise ValueError(
                f"selection.feature_memory.layers={layers!r}: a list of layers, [] (off) or auto"
            )
        if isinstance(layers, list | tuple) and layer_names is not None:
            _check_names("selection.feature_memory.layers", layers, layer_names)
        if min(int(memory["patches"]), int(memory["max_distances"]), int(memory["pool"])) < 1 \
                or int(memory["pool"]) % 2 == 0:
            raise ValueError("selection.feature_memory: patches and max_distances must be >= 1 and pool an "
                             "odd number >= 1")
        self.feature_memory = memory
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
    image_score_transfer: dict[str, Any] = field(default_factory=dict)

    def candidate(self, spec: MapSpec) -> Candidate:
        return next(c for c in self.candidates if c.spec == spec)

    def summary(self) -> dict[str, Any]:
        """The ``selection`` block of metrics.json."""
        chosen = self.candidate(self.map)
        score_entry = next(e for e in self.score_candidates if e["label"] == self.score.label)
        return {
            "objective": self.objective,
            "tie_break": tie_break(self.objective),
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
            "image_score_transfer": self.image_score_transfer,
            "notes": self.notes,
            "seconds": self.seconds,
        }


def tie_break(objective: str) -> str:
    """The metric that decides between candidates whose ``objective`` ties (within ``TIE_TOLERANCE``)."""
    return "pixel_aupro" if objective == "pixel_auroc" else "pixel_auroc"


def rank_key(metrics: Mapping[str, float], objective: str) -> tuple[float, float]:
    """Sort key (higher is better): the objective on a 1e-3 grid, then the tie-break metric."""
    value = objective_value(metrics, objective)
    value = -math.inf if not math.isfinite(value) else math.floor(value / TIE_TOLERANCE)
    tie = metrics.get(tie_break(objective), float("nan"))
    return value, (tie if math.isfinite(tie) else -math.inf)
