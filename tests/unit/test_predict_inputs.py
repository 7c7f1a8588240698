"""Which files predict reads, where its heatmaps go, and what it does with files that do not decode
(anomaly_attn/cli/predict.py), with a stand-in map engine: no training needed."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from anomaly_attn.cli import predict
from anomaly_attn.data.errors import CorruptImageError
from tests.conftest import run_cli


class FakeEngine:
    """The part of ``MapEngine`` that predict uses: the map is the image, the score its maximum."""

    image_size, in_channels, device = 16, 1, torch.device("cpu")

    def compute_maps(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {"selected": images.mean(1, keepdim=True)}, images

    def map_scores(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"selected": maps["selected"].flatten(1).amax(1)}


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    # image threshold 0.5, no colour-scale maximum
    monkeypatch.setattr(predict, "_load_engine", lambda *args: (FakeEngine(), 0.5, None))


def make_folder(root: Path) -> None:
    """Two defect sub-folders with the same file names, a JPEG, a corrupt PNG and files that are no
    images (a text file, a hidden macOS copy, a notebook checkpoint folder)."""
    for name, level in (("crack/000.png", 255), ("hole/000.png", 0), ("good/img.jpg", 200)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (30, 20), level).save(root / name)
    (root / "crack" / "001.png").write_bytes(b"not an image")
    (root / "notes.txt").write_text("taken on monday")
    (root / "crack" / "._000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "x.png").write_bytes(b"")


def test_list_images_takes_image_extensions_and_names_the_other_files(tmp_path: Path, caplog) -> None:
    make_folder(tmp_path)
    with caplog.at_level(logging.INFO, logger=predict.__name__):
        files = predict.list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == [
        "crack/000.png", "crack/001.png", "good/img.jpg", "hole/000.png"
    ]
    # One line names the non-image file; hidden files and folders are left out silently.
    (record,) = [r for r in caplog.records if "not images" in r.getMessage()]
    assert record.getMessage().endswith("1 file: notes.txt")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("")
    (tmp_path / "docs" / ".DS_Store").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no images"):
        predict.list_images(tmp_path / "docs")


def test_heatmaps_mirror_the_input_folders() -> None:
    assert predict.heatmap_path("crack/000.png") == "crack/000.png"
    assert predict.heatmap_path("sub/img.jpg") == "sub/img.jpg.png"  # a.jpg and a.png stay apart
    assert predict.heatmap_path("top.PNG") == "top.PNG"


def test_undecodable_images_are_skipped_with_one_warning(tmp_path: Path, fake_engine, caplog) -> None:
    make_folder(tmp_path / "in")
    with caplog.at_level(logging.INFO, logger=predict.__name__):
        rows = predict.predict_folder("model.ckpt", tmp_path / "in", tmp_path / "out", batch_size=2)
    assert [row["file"] for row in rows] == ["crack/000.png", "good/img.jpg", "hole/000.png"]
    assert [row["predicted_label"] for row in rows] == [1, 1, 0]  # max pixel 1, 200/255, 0 vs 0.5
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "do not decode" in warning.getMessage() and warning.getMessage().count("crack/001.png") == 1
    heatmaps = sorted(p.relative_to(tmp_path / "out" / "heatmaps").as_posix()
                      for p in (tmp_path / "out" / "heatmaps").rglob("*.png"))
    assert heatmaps == ["crack/000.png", "good/img.jpg.png", "hole/000.png"]
    with (tmp_path / "out" / "scores.csv").open() as handle:
        assert [row["file"] for row in csv.DictReader(handle)] == [row["file"] for row in rows]


def test_strict_names_every_undecodable_image_before_writing_anything(tmp_path: Path, fake_engine) -> None:
    make_folder(tmp_path / "in")
    (tmp_path / "in" / "hole" / "002.jpg").write_bytes(b"\xff\xd8\xff truncated")
    with pytest.raises(CorruptImageError, match=r"2 files: crack/001\.png, hole/002\.jpg \(strict=true\)"):
        predict.predict_folder("model.ckpt", tmp_path / "in", tmp_path / "out", strict=True)
    assert not (tmp_path / "out").exists()


def test_a_folder_of_only_undecodable_images_is_an_error(tmp_path: Path, fake_engine) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(CorruptImageError, match="1 file: broken.png; no image left to predict"):
        predict.predict_folder("model.ckpt", tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out" / "maps.npz").exists() and not (tmp_path / "out" / "scores.csv").exists()


def test_predict_without_ckpt_path_says_what_to_pass(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # as a user runs it: no traceback asked for
    result = run_cli([f"input_dir={tmp_path}"], cwd=tmp_path, module="anomaly_attn.predict")
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "ckpt_path" in line
    assert "python -m anomaly_attn.predict ckpt_path=" in line  # an example command
