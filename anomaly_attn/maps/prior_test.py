"""The prior test of map selection and the image-score rules (``selection.image_score_confirm``).

The prior (``selection.prior``, a control map such as the plain residual) stays the choice, of the map
and of the image score, unless the best candidate beats it in at least ``selection.confidence`` of paired
bootstrap resamples of the validation images (:class:`PriorTest`). For the image score the rule decides
which images choose and which confirm: all of them (``same``), two halves (``split_half``), or all of them
and besides each generator's own anomalies (``per_generator``). :func:`image_score_transfer` estimates,
on validation data only, how each rule does on a generator it did not choose on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from torch import Tensor

from anomaly_attn.maps.scoring import ValidationScorer
from anomaly_attn.maps.selection_result import IMAGE_SCORE_CONFIRM, TIE_TOLERANCE, SelectionSettings
from anomaly_attn.maps.specs import MapSpec, ScoreSpec

# The prior and the best candidate: two map specs, or two image scores.
_Choice = TypeVar("_Choice", MapSpec, ScoreSpec)


class PriorTest:
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
        self.groups = bootstrap_groups(labels)
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
        win_rate = bootstrap_win_rate(score, best, prior, self.groups, self.resamples, self.rng, units)
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


def confirmed(
    values: Mapping[ScoreSpec, Tensor], scorer: ValidationScorer, best: ScoreSpec, prior: ScoreSpec | None,
    prior_test: PriorTest,
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
    groups = bootstrap_groups(labels)
    unit_generators = _unit_generators(labels, generators, groups)
    if prior is None or unit_generators is None or len(set(unit_generators)) < 2:
        return {}
    rules: dict[str, Any] = {}
    bests: dict[tuple[str, bool], ScoreSpec] = {}  # same and per_generator choose on the same images
    for rule in IMAGE_SCORE_CONFIRM:
        folds = {}
        for held_out in sorted(set(unit_generators)):
            inside = unit_generators == held_out
            test = PriorTest(settings, labels, generators, units=np.flatnonzero(~inside), rule=rule)
            if (held_out, test.split_half) not in bests:
                bests[held_out, test.split_half] = best_image_score(
                    values, scorer, pixel_choice, test.choice_weights()
                )
            best = bests[held_out, test.split_half]
            chosen = confirmed(values, scorer, best, prior, test)
            weights = np.isin(groups, np.flatnonzero(inside)).astype(np.float64)
            gain = scorer.image(values[chosen], weights) - scorer.image(values[prior], weights)
            folds[held_out] = {"chosen": chosen.label, "gain": gain}
        gains = [fold["gain"] for fold in folds.values()]
        rules[rule] = {"gain_mean": float(np.mean(gains)), "gain_min": float(np.min(gains)), "folds": folds}
    return {"prior": prior.label, "held_out": "each generator in turn; the rule chooses on the others",
            "rules": rules}


def bootstrap_groups(labels: Tensor) -> np.ndarray:
    """Resampling units: a clean image and its anomalous copy (the synthetic set's first and second
    halves) are drawn together; any other layout resamples single images."""
    values = labels.cpu().numpy()
    half = len(values) // 2
    if len(values) % 2 == 0 and not values[:half].any() and values[half:].all():
        return np.r_[np.arange(half), np.arange(half)]
    return np.arange(len(values))


def bootstrap_win_rate(
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


def best_image_score(
    values: Mapping[ScoreSpec, Tensor], scorer: ValidationScorer, pixel_choice: MapSpec,
    weights: np.ndarray | None,
) -> ScoreSpec:
    """The best image score by the AUROC of the ``weights``-weighted images (as _select_image_score)."""
    return max(values, key=lambda s: score_key(scorer.image(values[s], weights), s, pixel_choice))


def score_key(value: float, score: ScoreSpec, pixel_choice: MapSpec) -> tuple[float, int]:
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
