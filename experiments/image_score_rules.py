"""Which image-score rule to trust on an unseen kind of defect, from validation data only.

    python experiments/image_score_rules.py outputs/image_score_rules/multirun   # after the sweeps
    make paper-image_score_rules                                               # sweeps + report + this

Reads every complete run below the directory (metrics.json's ``selection.image_score_transfer``: for each
generator of the run's synthetic validation set, each rule of ``selection.image_score_confirm`` chose
the image score on the other generators' images and was scored against the residual's max on the
held-out generator's) and writes ``<dir>/report/image_score_rules.md``: per dataset and over all runs,
each rule's mean gain with a 95 % bootstrap interval over runs and its paired difference from ``same``
(``anomaly_attn.reporting.transfer_table``). A rule is better than ``same`` where that interval lies
above 0. No test metric is read.
"""

from __future__ import annotations

from selection_report import run_report_cli

from anomaly_attn.reporting.runs import Run
from anomaly_attn.reporting.transfer_table import transfer_markdown


def rules_markdown(runs: list[Run]) -> str:
    lines = transfer_markdown(runs, lambda run: str(run.value("dataset")))
    if not lines:
        return ("No run holds selection.image_score_transfer (it needs a synthetic validation set with two "
                "or more generators and selection.prior set).\n")
    return "### Image-score rules on a held-out kind of synthetic defect\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return run_report_cli(argv, __doc__, "image_score_rules", rules_markdown)


if __name__ == "__main__":
    raise SystemExit(main())
