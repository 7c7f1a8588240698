"""Does the training-time attention loss improve the map chosen on validation data?

    python experiments/attention_training.py outputs/attention_training/multirun   # after the sweeps
    make paper-attention_training                                                 # sweeps + this

Per dataset and category: the validation objective (mean of pixel AUROC and AUPRO on the synthetic
validation set) of the selected map with ``map.weight=0`` and with each ``map.loss`` at the
swept weight, the difference, and (for reference, not used to decide anything) the selected map's test
pixel AUROC. Writes ``<dir>/report/attention_training.md``.
"""

from __future__ import annotations

import math

from omegaconf import OmegaConf
from selection_report import run_report_cli

from anomaly_attn.common.objectives import objective_value
from anomaly_attn.reporting.runs import Run


def setting(run: Run) -> tuple[str, str, float, str]:
    """(dataset, category, attention weight, attention loss) of a run, from its config.yaml; the category
    carries the run's seed (``0 (seed 1)``) where seeds other than 0 were run, so that each seed's
    loss runs are compared with the same seed's run without the loss."""
    cfg = OmegaConf.load(run.path / "config.yaml")
    weight = float(OmegaConf.select(cfg, "map.weight"))
    loss = str(OmegaConf.select(cfg, "map.loss")) if weight > 0 else "off"
    seed = OmegaConf.select(cfg, "seed")
    category = str(run.value("category")) + (f" (seed {seed})" if seed not in (None, 0) else "")
    return str(run.value("dataset")), category, weight, loss


def _fmt(value: float) -> str:
    return f"{value:+.3f}" if math.isfinite(value) else "–"


def training_markdown(runs: list[Run]) -> str:
    table: dict[tuple[str, str], dict[str, tuple[float, float, float]]] = {}
    weights = set()
    for run in runs:
        selection = run.value("selection")
        if run.status != "complete" or not isinstance(selection, dict):
            continue
        dataset, category, weight, loss = setting(run)
        weights.add(weight)
        validation = selection["chosen"]["validation"]
        value = objective_value(validation, selection["objective"])
        table.setdefault((dataset, category), {})[loss] = (value, float(run.value("pixel_auroc")), weight)
    losses = ["mean", "mean_std", "expansion"]
    header = ["data", "category", "off: val objective (test pixel AUROC)"]
    header += [f"{loss}: Δ val objective (test pixel AUROC)" for loss in losses]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    deltas: dict[str, list[float]] = {loss: [] for loss in losses}
    for (dataset, category), entries in sorted(table.items()):
        if "off" not in entries:
            continue
        off_value, off_test, _ = entries["off"]
        cells = [dataset, category, f"{off_value:.3f} ({off_test:.3f})"]
        for loss in losses:
            if loss in entries:
                value, test, _ = entries[loss]
                deltas[loss].append(value - off_value)
                cells.append(f"{_fmt(value - off_value)} ({test:.3f})")
            else:
                cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for loss in losses:
        values = deltas[loss]
        if values:
            better = sum(v > 0.001 for v in values)
            lines.append(
                f"- {loss}: mean Δ validation objective {sum(values) / len(values):+.4f}; better "
                f"(> +0.001) on {better} of {len(values)} categories × seeds"
            )
    swept = sorted(w for w in weights if w > 0)
    lines.append(f"- map.weight swept: {', '.join(f'{w:g}' for w in swept) or 'none'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return run_report_cli(argv, __doc__, "attention_training", training_markdown)


if __name__ == "__main__":
    raise SystemExit(main())
