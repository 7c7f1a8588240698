"""Real dataset layouts end to end: MVTec AD and BTAD trees as their archives unpack, bad inputs, downloads.

The trees come from ``tests.fixtures`` (seeded noise in the official folder layouts). The fast tests go
through the same functions the CLI calls (``expand_sweep_overrides``, ``train_job``); the ``slow`` ones
run ``python -m anomaly_attn.train`` in a subprocess and check its exit status and stderr. A dataset
root is never written to: every test that reads one compares a snapshot taken before and after.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_attn.cli.sweeps import expand_sweep_overrides
from anomaly_attn.data.build import build_dataset
from anomaly_attn.data.download import ChecksumMismatchError
from anomaly_attn.data.errors import CorruptImageError, LayoutError, MissingDataError
from anomaly_attn.jobs.train import train_job
from tests.conftest import compose_cfg, run_cli
from tests.fixtures import MVTEC_DEFECT_TYPES, make_btad_tree, make_mvtec_tree, snapshot_tree
from tests.unit.test_download import serve  # noqa: F401 (pytest fixture: loopback HTTP server)

BTAD_TOP = "BTech_Dataset_transformed"


def tiny(dataset: str, root: Path, **extra: str) -> list[str]:
    """Overrides for a job on a tiny real-layout tree that trains in seconds."""
    overrides = {
        "dataset": dataset,
        "dataset.root": str(root),
        "dataset.image_size": "64",
        "dataset.batch_size": "4",
        "dataset.num_workers": "0",
        "trainer.max_epochs": "1",
        "logger": "csv",
        "visualization.max_overlays": "0",
        # A handful of training images: too few held-out ones for synthetic validation (map selection).
        "validation": "none",
    }
    overrides.update(extra)
    return [f"{key}={value}" for key, value in overrides.items()]


@pytest.fixture
def btad_root(tmp_path: Path) -> Path:
    """BTAD as btad.zip unpacks: root/BTech_Dataset_transformed/{01,02,03}."""
    return make_btad_tree(tmp_path / "btad")


def expanded_categories(argv: list[str]) -> list[str]:
    (category,) = [arg for arg in argv if arg.startswith("category=")]
    return category.removeprefix("category=").split(",")


# ----------------------------------------------------------------------------- sweeps over real layouts
def test_category_glob_expands_to_the_15_mvtec_and_3_btad_categories(tmp_path: Path) -> None:
    mvtec_root = make_mvtec_tree(tmp_path / "mvtec", size=8, n_train=1, n_test_good=1)
    btad_root = make_btad_tree(tmp_path / "btad", size=8, n_train=1, n_test_good=1, n_per_defect=1)

    mvtec = expand_sweep_overrides(["-m", "dataset=mvtec", f"dataset.root={mvtec_root}", "category=glob(*)"])
    btad = expand_sweep_overrides(["-m", "dataset=btad", f"dataset.root={btad_root}", "category=glob(*)"])

    assert expanded_categories(mvtec) == sorted(MVTEC_DEFECT_TYPES) and len(expanded_categories(mvtec)) == 15
    assert expanded_categories(btad) == ["01", "02", "03"]
    assert mvtec[:3] == ["-m", "dataset=mvtec", f"dataset.root={mvtec_root}"], "other arguments untouched"
    subset = expand_sweep_overrides(
        ["dataset=btad", f"dataset.root={btad_root}", "category=glob(*,exclude=02)"]
    )
    assert expanded_categories(subset) == ["01", "03"]


def test_unknown_category_lists_the_valid_ones(btad_root: Path) -> None:
    with pytest.raises(ValueError, match="unknown btad category '04'; valid categories: 01, 02, 03"):
        expand_sweep_overrides(["dataset=btad", f"dataset.root={btad_root}", "category=04"])


# ----------------------------------------------------------------------------- bad data, named culprits
def break_category(root: Path, case: str) -> tuple[str, list[str]]:
    """Damage BTAD product 02 under ``root`` the way ``case`` says; return (category, expected in message)."""
    product = root / BTAD_TOP / "02"
    if case == "missing_root":
        missing = root / "nowhere"
        return "02", [
            str(missing / "02"),
            str(missing / BTAD_TOP / "02"),
            "dataset.download=true",
            "btad.zip",
        ]
    if case == "corrupt_image":
        bad = product / "train" / "ok" / "0001.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        return "02", ["cannot decode image", str(bad)]
    if case == "defect_without_mask":
        (product / "ground_truth" / "ko" / "0001.png").unlink()
        return "02", [
            str(product / "test" / "ko" / "0001.png"),
            str(product / "ground_truth" / "ko" / "0001.png"),
        ]
    if case == "mask_of_another_size":
        mask = product / "ground_truth" / "ko" / "0000.png"
        Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(mask)
        return "02", [str(mask), str(product / "test" / "ko" / "0000.png"), "16×16", "32×32"]
    if case == "empty_category":
        for image in (product / "train" / "ok").iterdir():
            image.unlink()
        return "02", ["category '02' has no training images", str(product / "train" / "ok")]
    raise AssertionError(case)


BAD_DATA = {
    "missing_root": MissingDataError,
    "corrupt_image": CorruptImageError,
    "defect_without_mask": LayoutError,
    "mask_of_another_size": LayoutError,
    "empty_category": LayoutError,
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_fails_before_training_naming_the_files(tmp_path: Path, btad_root: Path, case: str) -> None:
    category, expected = break_category(btad_root, case)
    root = btad_root / "nowhere" if case == "missing_root" else btad_root
    before = snapshot_tree(btad_root)
    with pytest.raises(BAD_DATA[case]) as error:
        train_job(compose_cfg(tiny("btad", root, category=category)), tmp_path / "run")
    for text in expected:
        assert text in str(error.value), f"{text!r} missing from: {error.value}"
    assert snapshot_tree(btad_root) == before, "the dataset root was modified"
    assert not list((tmp_path / "run").rglob("*.ckpt")), "nothing trained"


def test_skip_corrupt_skips_the_file_with_a_warning(
    tmp_path: Path, btad_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, expected = break_category(btad_root, "corrupt_image")
    before = snapshot_tree(btad_root)
    with caplog.at_level(logging.WARNING):
        metrics = train_job(
            compose_cfg(tiny("btad", btad_root, category="02", **{"dataset.skip_corrupt": "true"})),
            tmp_path / "run",
        )
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(expected[1] in message and "skip_corrupt" in message for message in warnings), warnings
    assert metrics["n_train"] + metrics["n_val"] == 3, "4 training images, the corrupt one skipped"
    assert metrics["n_test"] == 4 and 0.0 <= metrics["pixel_auroc"] <= 1.0
    assert snapshot_tree(btad_root) == before


def test_folder_without_ground_truth_runs_and_skips_pixel_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_mvtec_tree(tmp_path / "mine", categories=["bottle"], n_train=4, n_test_good=2)
    for mask_dir in (root / "bottle" / "ground_truth").iterdir():
        for mask in mask_dir.iterdir():
            mask.unlink()
        mask_dir.rmdir()
    (root / "bottle" / "ground_truth").rmdir()
    before = snapshot_tree(root)
    with caplog.at_level(logging.WARNING):
        metrics = train_job(compose_cfg(tiny("folder", root, category="bottle")), tmp_path / "run")
    assert any("no pixel masks: pixel metrics skipped" in record.getMessage() for record in caplog.records)
    assert "pixel_auroc" not in metrics and "pixel_auroc" not in metrics["controls"]["residual_l2"]
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and metrics["n_test"] == 2 + 3
    assert (
        json.loads((tmp_path / "run" / "metrics.json").read_text())["image_auroc"] == metrics["image_auroc"]
    )
    assert snapshot_tree(root) == before


# ----------------------------------------------------------------------------- download over loopback
def btad_zip(tmp_path: Path) -> bytes:
    """btad.zip as distributed: every file under the top folder BTech_Dataset_transformed/."""
    source = make_btad_tree(tmp_path / "zip_source", categories=["01", "03"])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(source.rglob("*")):
            archive.write(path, path.relative_to(source).as_posix())
    return buffer.getvalue()


def test_btad_download_from_loopback_ends_in_a_completed_run(tmp_path: Path, serve) -> None:  # noqa: F811
    payload = btad_zip(tmp_path)
    server = serve({"btad.zip": payload})
    root = tmp_path / "data" / "btad"
    overrides = {
        "dataset.download": "true",
        "dataset.url": server.url("btad.zip"),
        "dataset.sha256": hashlib.sha256(payload).hexdigest(),
    }
    metrics = train_job(compose_cfg(tiny("btad", root, category="03", **overrides)), tmp_path / "run")

    assert metrics["category"] == "03" and metrics["n_test"] == 4 and math.isfinite(metrics["pixel_auroc"])
    assert sorted(p.name for p in (root / BTAD_TOP).iterdir()) == ["01", "03"]
    assert not (root / "btad.zip").exists(), "the archive is deleted after extraction"
    # The next job (another product of the same archive) finds it extracted and downloads nothing.
    served = server.bytes_served
    layout = build_dataset(compose_cfg(tiny("btad", root, category="01", **overrides))).prepare("01")
    assert layout.root == root / BTAD_TOP / "01" and server.bytes_served == served


def test_btad_download_with_a_wrong_sha256_is_refused(tmp_path: Path, serve) -> None:  # noqa: F811
    payload = btad_zip(tmp_path)
    server = serve({"btad.zip": payload})
    root = tmp_path / "data" / "btad"
    wrong = "0" * 64
    overrides = {"dataset.download": "true", "dataset.url": server.url("btad.zip"), "dataset.sha256": wrong}
    with pytest.raises(ChecksumMismatchError) as error:
        train_job(compose_cfg(tiny("btad", root, category="01", **overrides)), tmp_path / "run")
    assert wrong in str(error.value) and hashlib.sha256(payload).hexdigest() in str(error.value)
    assert not (root / BTAD_TOP).exists() and not (root / "btad.zip").exists(), "nothing kept"


# ----------------------------------------------------------------------------- the CLI (subprocesses)
@pytest.mark.slow
def test_btad_glob_runs_three_jobs_through_the_cli(tmp_path: Path, btad_root: Path) -> None:
    before = snapshot_tree(btad_root)
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        ["-m", *tiny("btad", btad_root), "category=glob(*)", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(path.read_text()) for path in sorted(sweep_dir.rglob("metrics.json"))]
    assert [m["category"] for m in metrics] == ["01", "02", "03"]
    assert all(m["dataset"] == "btad" and 0.0 <= m["pixel_auroc"] <= 1.0 for m in metrics)
    assert snapshot_tree(btad_root) == before


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown_category", *sorted(BAD_DATA)])
def test_bad_inputs_through_the_cli_exit_non_zero_naming_the_culprit(
    tmp_path: Path, btad_root: Path, case: str
) -> None:
    if case == "unknown_category":
        category, expected, root = "04", ["'04'", "01, 02, 03"], btad_root
    else:
        category, expected = break_category(btad_root, case)
        root = btad_root / "nowhere" if case == "missing_root" else btad_root
    before = snapshot_tree(btad_root)
    result = run_cli(
        [*tiny("btad", root, category=category), f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path
    )
    assert result.returncode != 0
    for text in expected:
        assert text in result.stderr, f"{text!r} missing from stderr: {result.stderr[-2000:]}"
    assert snapshot_tree(btad_root) == before


@pytest.mark.slow
def test_skip_corrupt_through_the_cli_warns_and_completes(tmp_path: Path, btad_root: Path) -> None:
    _, expected = break_category(btad_root, "corrupt_image")
    run_dir = tmp_path / "run"
    result = run_cli(
        [
            *tiny("btad", btad_root, category="02", **{"dataset.skip_corrupt": "true"}),
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"skipping {expected[1]} (skip_corrupt=true)" in result.stdout + result.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["n_test"] == 4
