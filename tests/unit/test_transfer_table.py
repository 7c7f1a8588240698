"""The image-score rules' held-out-generator table (reporting.transfer_table) over many runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_attn.reporting.runs import Run
from anomaly_attn.reporting.transfer_table import transfer_gains, transfer_markdown


def _run(path: Path, same: float, split_half: float, per_generator: float, dataset: str = "textures"
         ) -> Run:
    rules = {name: {"gain_mean": gain, "gain_min": gain, "folds": {}}
             for name, gain in (("same", same), ("split_half", split_half), ("per_generator", per_generator))}
    selection = {"image_score_transfer": {"rules": rules}}
    return Run(path=path, metrics={"dataset": dataset, "selection": selection})


def test_rules_are_compared_with_same_paired_over_runs(tmp_path: Path) -> None:
    # per_generator beats same by 0.02 in every run (its interval excludes 0); split_half by -0.01 to
    # +0.01 around 0 (it does not).
    runs = [_run(tmp_path / f"r{i}", -0.03 + 0.001 * i, -0.03 + 0.001 * i + (0.01 if i % 2 else -0.01),
                 -0.01 + 0.001 * i) for i in range(10)]
    runs.append(Run(path=tmp_path / "failed", status="failed"))
    runs.append(Run(path=tmp_path / "old", metrics={"dataset": "textures", "selection": {}}))
    assert len(transfer_gains(runs)) == 10
    lines = transfer_markdown(runs)
    rows = {line.split(" | ")[1]: line for line in lines if line.startswith("| all |")}
    assert set(rows) == {"same", "split_half", "per_generator"}
    assert rows["same"].startswith("| all | same | 10 | -0.0255 [") and rows["same"].endswith("| – |")
    assert "| +0.0200 [+0.0200, +0.0200]* |" in rows["per_generator"]
    assert rows["split_half"].endswith("[-0.0060, +0.0060] |")  # no *: the interval holds 0


def test_groups_get_their_own_rows_and_runs_without_an_estimate_none(tmp_path: Path) -> None:
    runs = [_run(tmp_path / "a", 0.0, 0.01, 0.02, "elpv"), _run(tmp_path / "b", 0.0, 0.0, -0.01, "textures")]
    lines = transfer_markdown(runs, lambda run: str(run.value("dataset")))
    rows = [line for line in lines if line.startswith("| ") and " | n |" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| elpv"] * 3 + ["| textures"] * 3 + ["| all"] * 3
    # one or two runs: a mean, no interval and no star
    no_interval = "+0.0100 (n < 5: no interval)"
    assert rows[1] == f"| elpv | split_half | 1 | {no_interval} | {no_interval} |"
    assert transfer_markdown([Run(path=tmp_path / "c", metrics={"selection": {}})]) == []


@pytest.mark.parametrize("missing", ["split_half", "per_generator"])
def test_a_run_from_before_a_rule_existed_is_left_out(tmp_path: Path, missing: str) -> None:
    run = _run(tmp_path / "r", 0.0, 0.0, 0.0)
    del run.metrics["selection"]["image_score_transfer"]["rules"][missing]
    assert transfer_gains([run]) == []
