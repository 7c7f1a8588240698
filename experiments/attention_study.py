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
  the regret: the best candidate's test objective minus the chosen map's (runs before it: –).

Test scores of candidates are post-hoc analysis: nothing here feeds back into any choice.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import OmegaConf
from selection_report import run_report_cli

from anomaly_attn.common.objectives import objective_value
from anomaly_attn.reporting.runs import Run

FAMILIES = ("attention", "attention+residual", "residual_l2", "residual_ssim", "residual_highpass")


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


def category_cell(run: Run, runs: list[Run]) -> str:
    """The run's category, with its seed where the runs hold several seeds (one row per run and seed)."""
    seeds = {str(r.value("seed")) for r in runs if r.status == "complete"}
    category = str(run.value("category"))
    return f"{category} (seed {run.value('seed')})" if len(seeds) > 1 else category


def study_rows(runs: list[Run], metric: str) -> list[list[str]]:
    rows = []
    for run in runs:
        selection = run.value("selection")
        if run.status != "complete" or not isinstance(selection, dict):
            continue
        objective = selection["objective"]
        candidates = selection["candidates"]
        cells = [condition(run), category_cell(run, runs), selection["chosen"]["label"]]
        cells.append(f"{_fmt(run.value(f'validation.{metric}'))} → {_fmt(run.value(metric))}")
        for family in FAMILIES:
            best = best_of_family(candidates, family, objective)
            if best is None:
                cells.append("–")
                continue
            test = best.get("posthoc_test", {}).get(metric)
            cells.append(f"{_fmt(best['validation'][metric])} → {_fmt(test)}")
        raw = next((c for c in candidates if c["label"] == "residual_l2"), None)
        cells.append(
            f"{_fmt(raw['validation'][metric]) if raw else '–'} → "
            f"{_fmt(run.value(f'controls.residual_l2.{metric}'))}"
        )
        cells.append(_fmt(run.value(f"controls.image_highpass.{metric}")))
        cells.append(_fmt(selection.get("posthoc_spearman")))
        cells.append(_fmt(selection.get("posthoc_regret")))
        rows.append(cells)
    return sorted(rows, key=lambda cells: (cells[0], cells[1]))


def study_markdown(runs: list[Run]) -> str:
    header = [
        "data",
        "category",
        "chosen map",
        "chosen val → test",
        *(f"{family} val → test" for family in FAMILIES),
        "residual (σ=0) val → test",
        "image high-pass test",
        "Spearman val/test",
        "regret (test)",
    ]
    parts = []
    for metric, title in (("pixel_auroc", "Pixel AUROC"), ("pixel_aupro", "AUPRO (FPR ≤ 0.3)")):
        rows = study_rows(runs, metric)
        parts.append(f"### {title}: validation (synthetic anomalies) → test\n")
        parts.append("| " + " | ".join(header) + " |")
        parts.append("|" + "---|" * len(header))
        parts.extend("| " + " | ".join(cells) + " |" for cells in rows)
        parts.append("")
        parts.extend(summary_lines(runs, metric))
        parts.append("")
    parts.append("### Image AUROC of the selected image score (test)\n")
    parts.extend(summary_lines(runs, "image_auroc"))
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
