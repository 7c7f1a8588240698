"""The attention-study table: per category, validation and test scores of every candidate family.

    python experiments/attention_study.py outputs/attention_study/multirun   # after the sweep
    make paper-attention_study                                              # sweep + report + this

Reads every complete run below the directory (their metrics.json must hold the `selection` block with
post-hoc test scores: `selection.posthoc_test=true`) and writes `<dir>/report/attention_study.md`:

- for each family (gradient attention alone, attention fused with the residual, each control map), its
  member with the best VALIDATION objective, shown as validation → test pixel AUROC (and AUPRO);
- the map selection chose (over all families) with its validation and test scores;
- the residual as it is (σ = 0) and the model-free image high-pass, on test;
- Spearman's rank correlation of the validation and test objective over all candidates of the run, and
  the regret: the best candidate's test objective minus the chosen map's (runs before it: –);
- with several seeds, one row per condition and category: every number is the mean over seeds, the
  chosen map's test score with its standard deviation, and each distinct choice with how often it was made;
- the selected map against the same runs' residual_l2, paired on the same test images
  (``reporting.compare``): per category the difference with its bootstrap interval pooled over seeds, per
  condition how many intervals lie above or below 0 and a Wilcoxon test over categories (at least 6);
- per image-score rule (``selection.image_score_confirm``), its gain over the prior on a generator of the
  validation set that it did not choose on (``anomaly_attn.reporting.transfer_table``; validation only);
- the faithfulness table of the report (deletion against a random map and the residual, model
  randomization), once per condition.

Test scores of candidates are post-hoc analysis: nothing here feeds back into any choice.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from omegaconf import OmegaConf
from selection_report import run_report_cli

from anomaly_attn.common.objectives import objective_value
from anomaly_attn.reporting.compare import compare_runs
from anomaly_attn.reporting.faithfulness_table import faithfulness_markdown
from anomaly_attn.reporting.runs import Run
from anomaly_attn.reporting.transfer_table import transfer_markdown

FAMILIES = ("attention", "attention+residual", "feature_memory", "feature_memory+residual", "residual_l2",
            "residual_ssim", "residual_highpass")


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def condition(run: Run) -> str:
    """``fmnist/white``, ``fmnist/gray`` or the dataset name: what the category's test set is."""
    config_file = run.path / "config.yaml"
    corruption = None
    if config_file.exists():
        corruption = OmegaConf.select(OmegaConf.load(config_file), "dataset.corruption")
    dataset = str(run.value("dataset"))
    return f"{dataset}/{corruption}" if corruption else dataset


def best_of_family(candidates: list[dict[str, Any]], family: str, objective: str) -> dict[str, Any] | None:
    members = [c for c in candidates if c["family"] == family]
    if not members:
        return None
    return max(members, key=lambda c: objective_value(c["validation"], objective))


def _mean_std(values: list[float], spread: bool = False) -> str:
    numbers = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not numbers:
        return "–"
    mean = sum(numbers) / len(numbers)
    if not spread or len(numbers) < 2:
        return f"{mean:.3f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in numbers) / (len(numbers) - 1))
    return f"{mean:.3f} ± {std:.3f}"


def _val_test(pairs: list[tuple[Any, Any]], spread: bool = False) -> str:
    """``0.919 → 0.917``: means over seeds of validation and test (``± std`` of test with ``spread``)."""
    return f"{_mean_std([p[0] for p in pairs])} → {_mean_std([p[1] for p in pairs], spread)}"


def _chosen_labels(labels: list[str]) -> str:
    """The chosen map of one run, or each distinct choice over seeds with how often it was made."""
    if len(labels) == 1:
        return labels[0]
    counts = Counter(labels)
    return "; ".join(f"{label} ({count}/{len(labels)})" for label, count in counts.most_common())


def _complete_with_selection(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.status == "complete" and isinstance(r.value("selection"), dict)]


def _by_condition(runs: list[Run]) -> dict[str, list[Run]]:
    """The complete runs with a selection block, per condition (``fmnist/white``, ``textures``)."""
    by_condition: dict[str, list[Run]] = {}
    for run in _complete_with_selection(runs):
        by_condition.setdefault(condition(run), []).append(run)
    return by_condition


def groups(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """The study's cells: runs of one condition and category (one per seed), sorted by seed."""
    cells: dict[tuple[str, str], list[Run]] = {}
    for run in _complete_with_selection(runs):
        cells.setdefault((condition(run), str(run.value("category"))), []).append(run)
    return {key: sorted(members, key=lambda r: str(r.value("seed")))
            for key, members in sorted(cells.items())}


def present_families(runs: list[Run]) -> list[str]:
    """The candidate families of ``FAMILIES`` that some run scored (feature memory is opt-in)."""
    runs = _complete_with_selection(runs)
    seen = {c["family"] for run in runs for c in run.value("selection")["candidates"]}
    return [family for family in FAMILIES if family in seen]


def study_rows(runs: list[Run], metric: str, families_shown: list[str] | None = None) -> list[list[str]]:
    """One row per condition and category; with several seeds each number is the mean over seeds (the
    chosen map's test score with its standard deviation over seeds); a column per family of
    ``families_shown`` (default: :func:`present_families`)."""
    shown = present_families(runs) if families_shown is None else families_shown
    rows = []
    for (name, category), members in groups(runs).items():
        seeds = [str(r.value("seed")) for r in members]
        label = category if len(members) == 1 else f"{category} (seeds {','.join(seeds)})"
        chosen, families = [], {family: [] for family in shown}
        raw, highpass, spearman, regret, labels = [], [], [], [], []
        for run in members:
            selection = run.value("selection")
            objective, candidates = selection["objective"], selection["candidates"]
            labels.append(selection["chosen"]["label"])
            chosen.append((run.value(f"validation.{metric}"), run.value(metric)))
            for family in shown:
                best = best_of_family(candidates, family, objective)
                if best is not None:
                    families[family].append(
                        (best["validation"][metric], best.get("posthoc_test", {}).get(metric))
                    )
            residual = next((c for c in candidates if c["label"] == "residual_l2"), None)
            raw.append((residual["validation"][metric] if residual else None,
                        run.value(f"controls.residual_l2.{metric}")))
            highpass.append(run.value(f"controls.image_highpass.{metric}"))
            spearman.append(selection.get("posthoc_spearman"))
            regret.append(selection.get("posthoc_regret"))
        cells = [name, label, _chosen_labels(labels), _val_test(chosen, spread=len(members) > 1)]
        cells += [_val_test(families[family]) if families[family] else "–" for family in shown]
        cells += [_val_test(raw), _mean_std(highpass), _mean_std(spearman), _mean_std(regret)]
        rows.append(cells)
    return rows


COMPARED = ("pixel_auroc", "pixel_aupro", "image_auroc")


def _difference(row: Any, metric: str) -> str:
    point, low, high = row.difference[metric]
    mark = " *" if row.excludes_zero(metric) else ""
    return f"{point:+.3f} [{low:+.3f}, {high:+.3f}]{mark}"


def comparison_markdown(runs: list[Run]) -> list[str]:
    """Per condition, the selected map against the same runs' residual_l2 (``report --compare selected
    residual_l2 --where dataset.corruption=...``): per category the paired difference with its bootstrap
    interval over test images pooled over seeds, and the Wilcoxon test over categories."""
    by_condition = _by_condition(runs)
    header = ["data", "category", "seeds", "selected pixel AUROC", "residual_l2 pixel AUROC",
              *(f"Δ {metric} [95% CI]" for metric in COMPARED)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    tests = []
    for name, members in sorted(by_condition.items()):
        try:
            comparison = compare_runs(members, "selected", "residual_l2", metrics=COMPARED)
        except ValueError as error:
            tests.append(f"- {name}: no paired comparison ({error})")
            continue
        for row in comparison.categories:
            lines.append("| " + " | ".join([
                name, row.category, str(len(row.seeds)), f"{row.a['pixel_auroc']:.3f}",
                f"{row.b['pixel_auroc']:.3f}", *(_difference(row, metric) for metric in COMPARED),
            ]) + " |")
        for metric in COMPARED:
            rows = comparison.categories
            wins = sum(row.difference[metric][0] >= 0 for row in rows)
            above = sum(row.excludes_zero(metric) and row.difference[metric][0] > 0 for row in rows)
            below = sum(row.excludes_zero(metric) and row.difference[metric][0] < 0 for row in rows)
            across = comparison.across[metric]
            test = (across.note if across.note else
                    f"Wilcoxon over {across.n} categories p = {across.p:.4f} (Holm {across.p_holm:.4f})"
                    + (", significant" if across.significant else ""))
            tests.append(f"- {name}, {metric}: selected − residual_l2 ≥ 0 on {wins} of {len(rows)} "
                         f"categories; interval above 0 on {above}, below 0 on {below}; {test}")
    legend = ("Δ: selected − residual_l2 of the same runs, mean over seeds of the exact test metrics; "
              "[95% CI]: stratified bootstrap over test images (the runs' `intervals` settings), the same "
              "resampled images for both maps and every seed, pooled over seeds; `*`: the interval "
              "excludes 0 (reporting.compare; `python -m anomaly_attn.report DIR --compare selected "
              "residual_l2 --where dataset.corruption=white` gives the full tables).")
    return [*lines, "", *tests, "", legend]


def faithfulness_sections(runs: list[Run]) -> list[str]:
    """The report's faithfulness table (reporting.faithfulness_table), once per condition."""
    parts = []
    by_condition = _by_condition(runs)
    for name, members in sorted(by_condition.items()):
        table = faithfulness_markdown(members)
        if table:
            parts += [f"#### {name} ({len(members)} runs)\n", table]
    return parts


def study_markdown(runs: list[Run]) -> str:
    shown = present_families(runs)
    header = [
        "data",
        "category",
        "chosen map",
        "chosen val → test",
        *(f"{family} val → test" for family in shown),
        "residual (σ=0) val → test",
        "image high-pass test",
        "Spearman val/test",
        "regret (test)",
    ]
    parts = []
    for metric, title in (("pixel_auroc", "Pixel AUROC"), ("pixel_aupro", "AUPRO (FPR ≤ 0.3)")):
        rows = study_rows(runs, metric, shown)
        parts.append(f"### {title}: validation (synthetic anomalies) → test\n")
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "---|" * len(header))
        parts.extend("| " + " | ".join(cells) + " |" for cells in rows)
        parts.append("")
        parts.extend(summary_lines(runs, metric))
        parts.append("")
    parts.append("### Image AUROC of the selected image score (test)\n")
    parts.extend(summary_lines(runs, "image_auroc"))
    parts.append("")
    transfer = transfer_markdown(runs, condition)
    if transfer:
        parts.append("### Image-score rules on a held-out kind of synthetic defect (validation only)\n")
        parts.extend(transfer)
        parts.append("")
    parts.append("### Selected map vs residual_l2, paired over the same test images\n")
    parts.extend(comparison_markdown(runs))
    faithfulness = faithfulness_sections(runs)
    if faithfulness:
        parts.append("")
        parts.append("### Faithfulness of the maps (deletion, model randomization)\n")
        parts.extend(faithfulness)
    return "\n".join(parts) + "\n"


def summary_lines(runs: list[Run], metric: str) -> list[str]:
    """Per condition: mean test score of the chosen map vs the residual, and how often it is >=."""
    by_condition: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        chosen, residual = run.value(metric), run.value(f"controls.residual_l2.{metric}")
        if run.status == "complete" and isinstance(chosen, float) and isinstance(residual, float):
            by_condition.setdefault(condition(run), []).append((chosen, residual))
    lines = []
    for name, pairs in sorted(by_condition.items()):
        chosen_mean = sum(p[0] for p in pairs) / len(pairs)
        residual_mean = sum(p[1] for p in pairs) / len(pairs)
        wins = sum(p[0] >= p[1] for p in pairs)
        lines.append(
            f"- {name}: selected {chosen_mean:.3f} vs residual {residual_mean:.3f} (mean test "
            f"{metric}); selected ≥ residual on {wins} of {len(pairs)} runs (categories × seeds)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    return run_report_cli(argv, __doc__, "attention_study", study_markdown)


if __name__ == "__main__":
    raise SystemExit(main())
