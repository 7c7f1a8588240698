"""Paired comparisons across runs (``report --compare A B``) with bootstrap intervals over test images.

A side is ``KEY=VALUE`` (the selected maps of the complete runs whose metrics.json or config.yaml field
``KEY`` reads ``VALUE``: ``loss.name=mse``, ``layer=encoder.14``, ``model=unet``) or a map name
(``selected`` / ``residual_l2``: both sides inside each run). Runs are paired by (category, seed); the two
runs of a pair must agree in every other config key (``RUN_ONLY_KEYS``, the compared key, a ``X.name``
key's node ``X`` and the config leaf that holds the two compared values left out) and must have scored
the same test images (their ``interval_parts.npz``, written by ``IntervalInputs.save_parts``).

Per category: for each seed, A and B are resampled with the same weights (``resample_weights`` with the
runs' ``intervals.resamples`` and ``intervals.seed``: the same images for both maps and every seed); the
per-seed resampled differences A − B are averaged over seeds (pooled), and their percentile interval is
the category's interval. The point is the mean over seeds of the exact differences from metrics.json.
Across categories: a Wilcoxon signed-rank test on the per-category point differences (at least
``MIN_CATEGORIES`` categories), Holm-corrected over the compared metrics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_attn.common.atomic import write_text_atomic
from anomaly_attn.metrics.interval_inputs import PARTS_FILE, SAVED_MAPS, load_parts
from anomaly_attn.metrics.intervals import (
    image_metric_samples,
    interval,
    pixel_metric_samples,
    resample_weights,
)
from anomaly_attn.reporting.runs import Run, config_differences

MIN_CATEGORIES = 6
DEFAULT_METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")
IMAGE_METRICS = ("image_auroc", "image_f1_max")
PIXEL_METRICS = ("pixel_auroc", "pixel_aupro", "pixel_f1_max")


@dataclass(frozen=True)
class Side:
    """One side of a comparison: runs with ``key`` = ``value`` (their ``map``), or a map of every run."""

    spec: str
    map: str = "selected"
    key: str | None = None
    value: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Side:
        key, equals, value = spec.partition("=")
        if equals:
            if not key.strip() or not value.strip():
                raise ValueError(f"--compare {spec!r}: write KEY=VALUE (e.g. loss.name=mse) or a map name.")
            return cls(spec, key=key.strip(), value=value.strip())
        if spec not in SAVED_MAPS:
            raise ValueError(f"--compare {spec!r} is neither KEY=VALUE (e.g. loss.name=mse) nor a map whose "
                             f"parts runs keep ({', '.join(SAVED_MAPS)}).")
        return cls(spec, map=spec)

    def holds(self, run: Run) -> bool:
        return self.key is not None and str(run.value(self.key)) == self.value


@dataclass
class Pair:
    category: str
    seed: Any
    a: Run
    b: Run


@dataclass
class CategoryResult:
    """One category: its seeds, A's and B's mean point values, and per metric (point, low, high) of A − B."""

    category: str
    seeds: list[Any]
    a: dict[str, float] = field(default_factory=dict)
    b: dict[str, float] = field(default_factory=dict)
    difference: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def excludes_zero(self, metric: str) -> bool:
        _, low, high = self.difference[metric]
        return bool(low > 0 or high < 0)


@dataclass
class Across:
    """The across-category test of one metric (``note`` instead when it was not run)."""

    p: float = math.nan
    p_holm: float = math.nan
    n: int = 0
    significant: bool = False
    note: str = ""


@dataclass
class Comparison:
    side_a: Side
    side_b: Side
    metrics: tuple[str, ...]
    level: float
    settings: dict[str, Any]
    categories: list[CategoryResult]
    across: dict[str, Across]
    unpaired: list[str] = field(default_factory=list)


def _identity(run: Run) -> tuple[str, Any]:
    return str(run.value("category")), run.value("seed")


def _refuse_shared_identity(runs: list[Run], what: str) -> None:
    """Two runs of one side with the same (category, seed) cannot be paired: name the key they differ in
    and the ``--where`` that picks one (e.g. the attention study's white and gray Fashion-MNIST tests)."""
    seen: dict[tuple[str, Any], Run] = {}
    for run in runs:
        other = seen.setdefault(_identity(run), run)
        if other is run:
            continue
        differing = config_differences(other, run)
        detail, hint = "", ""
        if differing:
            key, mine, theirs = differing[0]
            detail = f" (they differ in {key}: {mine!r} vs {theirs!r})"
            hint = f"; compare one value at a time, e.g. --where {key}={mine}"
        raise ValueError(f"two runs with {what} share category {_identity(run)[0]}, seed "
                         f"{_identity(run)[1]}: {other.path} and {run.path}{detail}{hint}.")


def _pairs_of_groups(runs: list[Run], side_a: Side, side_b: Side) -> tuple[list[Pair], list[str]]:
    """Runs of A and B paired by (category, seed); also the runs left without a partner."""
    groups: list[dict[tuple[str, Any], Run]] = []
    for side in (side_a, side_b):
        members = [r for r in runs if side.holds(r)]
        _refuse_shared_identity(members, side.spec)
        group = {_identity(run): run for run in members}
        if not group:
            values = sorted({str(r.value(side.key)) for r in runs if side.key})
            raise ValueError(f"no complete run has {side.spec}; {side.key} takes the values "
                             f"{', '.join(values) or 'none'}.")
        groups.append(group)
    shared = sorted(groups[0].keys() & groups[1].keys(), key=str)
    if not shared:
        raise ValueError(f"no (category, seed) has runs of both {side_a.spec} and {side_b.spec}.")
    pairs = [Pair(category, seed, groups[0][(category, seed)], groups[1][(category, seed)])
             for category, seed in shared]
    unpaired = [str(run.path) for group in groups for key, run in group.items() if key not in shared]
    return pairs, sorted(unpaired)


def _check_same_config(pair: Pair, side_a: Side, side_b: Side) -> None:
    """Refuse a pair whose runs differ in a config key other than the compared one, naming it."""
    key = str(side_a.key)
    ignored = (key, key[: -len(".name")]) if key.endswith(".name") else (key,)
    for name, mine, theirs in config_differences(pair.a, pair.b, ignored=ignored):
        if (str(mine), str(theirs)) == (side_a.value, side_b.value):
            continue  # the config leaf that holds the compared value (e.g. model.name for model=...)
        raise ValueError(
            f"the runs of {pair.category}, seed {pair.seed} differ in {name}: {mine!r} vs {theirs!r} "
            f"({pair.a.path} vs {pair.b.path}), not only in {key}; compare runs that differ only in {key}."
        )


def _parts_of(run: Run, cache: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    if run.path not in cache:
        path = run.path / PARTS_FILE
        if not path.exists():
            raise ValueError(f"{run.path} has no {PARTS_FILE} (written by runs with intervals on); "
                             "re-run or re-evaluate it to compare.")
        cache[run.path] = load_parts(path)
    return cache[run.path]


def _settings_of(run: Run) -> dict[str, Any]:
    block = run.value("intervals")
    if not isinstance(block, dict) or not block.get("resamples"):
        raise ValueError(f"{run.path}: metrics.json has no intervals block (intervals were off).")
    return {key: block.get(key) for key in ("resamples", "seed", "map_side")}


def _check_same_images(pair: Pair, parts_a: dict[str, Any], parts_b: dict[str, Any]) -> None:
    paths_a, paths_b = parts_a["paths"], parts_b["paths"]
    if paths_a != paths_b:
        first = next((f"{x} vs {y}" for x, y in zip(paths_a, paths_b, strict=False) if x != y),
                     f"{len(paths_a)} vs {len(paths_b)} images")
        raise ValueError(f"the runs of {pair.category}, seed {pair.seed} scored different test images "
                         f"({pair.a.path} vs {pair.b.path}: {first}); a paired comparison needs the same.")
    for what in ("labels", "with_mask"):
        if not np.array_equal(parts_a[what], parts_b[what]):
            raise ValueError(f"the runs of {pair.category}, seed {pair.seed} disagree in the test {what}.")


def _samples(parts: dict[str, Any], name: str, weights: np.ndarray, metrics: Sequence[str]
             ) -> dict[str, np.ndarray]:
    """Resampled values of map ``name`` (nan for a metric the run cannot give)."""
    if name not in parts["scores"]:
        raise ValueError(f"the run kept no {name!r} map in its {PARTS_FILE}.")
    samples = image_metric_samples(parts["scores"][name], parts["labels"], weights)
    pixel = parts["parts"].get(name)
    if pixel is not None and any(m in PIXEL_METRICS for m in metrics):
        samples.update(pixel_metric_samples(pixel, weights[:, np.flatnonzero(parts["with_mask"])]))
    return {m: samples.get(m, np.full(len(weights), np.nan)) for m in metrics}


def _point(run: Run, name: str, metric: str) -> float:
    value = run.value(metric if name == "selected" else f"controls.{name}.{metric}")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _pair_differences(pair: Pair, side_a: Side, side_b: Side, metrics: Sequence[str],
                      cache: dict[Path, dict[str, Any]]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per metric the B resampled differences A − B of one pair, and the bootstrap settings used."""
    settings = _settings_of(pair.a)
    if pair.b is not pair.a and _settings_of(pair.b) != settings:
        raise ValueError(f"the runs of {pair.category}, seed {pair.seed} used other interval settings "
                         f"({settings} vs {_settings_of(pair.b)}); pairing needs the same resamples.")
    parts_a, parts_b = _parts_of(pair.a, cache), _parts_of(pair.b, cache)
    _check_same_images(pair, parts_a, parts_b)
    weights = resample_weights(parts_a["labels"], int(settings["resamples"]), int(settings["seed"] or 0))
    samples_a = _samples(parts_a, side_a.map, weights, metrics)
    samples_b = _samples(parts_b, side_b.map, weights, metrics)
    return {m: samples_a[m] - samples_b[m] for m in metrics}, settings


def _category_result(category: str, pairs: list[Pair], side_a: Side, side_b: Side, metrics: Sequence[str],
                     level: float, cache: dict[Path, dict[str, Any]]) -> tuple[CategoryResult, dict]:
    result = CategoryResult(category, [pair.seed for pair in pairs])
    per_seed, settings = [], {}
    for pair in pairs:
        differences, settings = _pair_differences(pair, side_a, side_b, metrics, cache)
        per_seed.append(differences)
    for metric in metrics:
        points_a = [_point(pair.a, side_a.map, metric) for pair in pairs]
        points_b = [_point(pair.b, side_b.map, metric) for pair in pairs]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-nan resamples stay nan, then left out
            pooled = np.nanmean(np.stack([d[metric] for d in per_seed]), axis=0)
        low, high = interval(pooled, level)
        result.a[metric], result.b[metric] = float(np.mean(points_a)), float(np.mean(points_b))
        point = float(np.mean(np.subtract(points_a, points_b)))
        result.difference[metric] = (point, low, high)
    return result, settings


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1); nan counts as 1."""
    p = np.nan_to_num(np.asarray(p_values, dtype=np.float64), nan=1.0)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (p.size - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def across_categories(categories: list[CategoryResult], metrics: Sequence[str], level: float
                      ) -> dict[str, Across]:
    """Wilcoxon signed-rank on the per-category point differences, Holm-corrected over ``metrics``."""
    from scipy.stats import wilcoxon

    across: dict[str, Across] = {}
    for metric in metrics:
        points = [c.difference[metric][0] for c in categories if not math.isnan(c.difference[metric][0])]
        if len(points) < MIN_CATEGORIES:
            across[metric] = Across(n=len(points), note=f"n/a: fewer than {MIN_CATEGORIES} categories, read "
                                                        "the per-category intervals")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            across[metric] = Across(p=float(wilcoxon(points).pvalue), n=len(points))
    tested = [metric for metric in metrics if not across[metric].note]
    for metric, adjusted in zip(tested, holm([across[m].p for m in tested]), strict=True):
        across[metric].p_holm = adjusted
        across[metric].significant = adjusted < 1.0 - level
    return across


def _all_pairs(runs: list[Run], side_a: Side, side_b: Side) -> tuple[list[Pair], list[str]]:
    complete = [run for run in runs if run.status == "complete"]
    if side_a.key is None and side_b.key is None:
        if side_a.map == side_b.map:
            raise ValueError(f"--compare {side_a.spec} {side_b.spec}: compare two different maps.")
        _refuse_shared_identity(complete, f"{side_a.spec} {side_b.spec}")
        return [Pair(*_identity(run), run, run) for run in complete], []
    if side_a.key is None or side_b.key is None:
        raise ValueError("--compare takes two KEY=VALUE sides or two map names, not one of each.")
    if side_a.key != side_b.key or side_a.value == side_b.value:
        raise ValueError(f"--compare {side_a.spec} {side_b.spec}: give one key with two values.")
    pairs, unpaired = _pairs_of_groups(complete, side_a, side_b)
    for pair in pairs:
        _check_same_config(pair, side_a, side_b)
    return pairs, unpaired


def compare_runs(runs: list[Run], spec_a: str, spec_b: str, metrics: Sequence[str] = DEFAULT_METRICS,
                 level: float = 0.95) -> Comparison:
    """The paired comparison of ``spec_a`` against ``spec_b`` (module docstring); raises ``ValueError``
    saying why when the runs cannot be paired."""
    side_a, side_b = Side.parse(spec_a), Side.parse(spec_b)
    unknown = [m for m in metrics if m not in IMAGE_METRICS + PIXEL_METRICS]
    if unknown:
        raise ValueError(f"cannot compare {', '.join(unknown)}: choose from {IMAGE_METRICS + PIXEL_METRICS}.")
    pairs, unpaired = _all_pairs(runs, side_a, side_b)
    if not pairs:
        raise ValueError("no complete runs to compare.")
    by_category: dict[str, list[Pair]] = {}
    for pair in sorted(pairs, key=lambda p: (p.category, str(p.seed))):
        by_category.setdefault(pair.category, []).append(pair)
    cache: dict[Path, dict[str, Any]] = {}
    categories, settings = [], {}
    for category, members in by_category.items():
        result, settings = _category_result(category, members, side_a, side_b, metrics, level, cache)
        categories.append(result)
    return Comparison(side_a, side_b, tuple(metrics), level, settings, categories,
                      across_categories(categories, metrics, level), unpaired)


def _signed(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:+.3f}"


def _plain(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3f}"


def _across_line(across: Across, n_tested: int) -> str:
    if across.note:
        return f"Across categories: {across.note}."
    mark = " **" if across.significant else ""
    return (f"Across categories (n = {across.n}): Wilcoxon signed-rank p = {across.p:.4f}, Holm-adjusted "
            f"over {n_tested} metric(s) p = {across.p_holm:.4f}{mark}")


def _legend(comparison: Comparison) -> str:
    settings, level = comparison.settings, comparison.level
    within = comparison.side_a.key is None
    return "\n".join([
        f"A − B: mean over seeds of the per-seed differences of the exact test metrics (metrics.json). "
        f"[{level:.0%} CI]: percentile interval of a stratified bootstrap over test images (anomalous and "
        f"normal images resampled separately), B = {settings.get('resamples')} resamples (seed "
        f"{settings.get('seed')}), paired on the same images: A and B"
        + (" (two maps of the same run)" if within else " (the runs' selected maps)")
        + " and every seed get the same resampled images; the per-seed resampled differences are "
        f"averaged over seeds (pooled) before the percentiles are taken. Pixel metrics are resampled on "
        f"maps at most {settings.get('map_side')} pixels a side, AUPRO and F1-max on a threshold grid.",
        "",
        "`*`: the interval excludes 0. Across categories: two-sided Wilcoxon signed-rank test on the "
        f"per-category point differences (at least {MIN_CATEGORIES} categories), Holm-corrected over the "
        f"compared metrics; `**`: Holm-adjusted p < {1 - level:.2f}.",
    ])


def to_markdown(comparison: Comparison) -> str:
    """compare.md: per metric a table (category | n seeds | A | B | A − B [CI]), the across-category
    line, then the legend."""
    side_a, side_b, level = comparison.side_a, comparison.side_b, comparison.level
    what = "" if side_a.key is None else " (selected maps)"
    lines = [f"# Paired comparison: A = `{side_a.spec}`, B = `{side_b.spec}`{what}", ""]
    for metric in comparison.metrics:
        lines += [f"## {metric}", "",
                  f"| category | n seeds | A | B | A − B [{level:.0%} CI] |", "|---|---|---|---|---|"]
        for row in comparison.categories:
            point, low, high = row.difference[metric]
            mark = " *" if row.excludes_zero(metric) else ""
            interval_text = f"{_signed(point)} [{_signed(low)}, {_signed(high)}]{mark}"
            lines.append(f"| {row.category} | {len(row.seeds)} | {_plain(row.a[metric])} | "
                         f"{_plain(row.b[metric])} | {interval_text} |")
        tested = sum(not a.note for a in comparison.across.values())
        lines += ["", _across_line(comparison.across[metric], tested), ""]
    if comparison.unpaired:
        lines += ["Runs without a partner (left out): " + ", ".join(comparison.unpaired), ""]
    lines += [_legend(comparison), ""]
    return "\n".join(lines)


def write_comparison(root: Path, runs: list[Run], spec_a: str, spec_b: str, out_dir: Path | None = None
                     ) -> Path:
    """Compare ``spec_a`` with ``spec_b`` over ``runs`` and write ``compare.md`` (in ``root/report``)."""
    out_dir = out_dir or Path(root) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "compare.md"
    write_text_atomic(path, to_markdown(compare_runs(runs, spec_a, spec_b)))
    return path
