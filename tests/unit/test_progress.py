"""The progress bars between Lightning's own: shown by default, off with ANOMALY_ATTN_PROGRESS=0."""

from __future__ import annotations

import pytest

from anomaly_attn.common.progress import progress


def test_a_bar_counts_its_steps(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("ANOMALY_ATTN_PROGRESS", "1")
    with progress("selection: stage 1 candidate maps", 3) as advance:
        for _ in range(3):
            advance(1)
    err = capsys.readouterr().err
    assert "selection: stage 1 candidate maps" in err and "3/3" in err


def test_no_bar_when_turned_off_or_empty(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("ANOMALY_ATTN_PROGRESS", "0")
    with progress("calibration", 2) as advance:
        advance(2)
    monkeypatch.setenv("ANOMALY_ATTN_PROGRESS", "1")
    with progress("nothing to do", 0) as advance:
        advance(1)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
