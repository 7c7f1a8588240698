"""Re-evaluating a checkpoint (new layer / attention, thresholds re-chosen on validation data) and
predicting on a folder of arbitrary images."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_attn.cli.predict import predict_folder
from anomaly_attn.cli.sweeps import expand_sweep_overrides
from anomaly_attn.data.dataset import open_image
from anomaly_attn.data.errors import CorruptImageError
from anomaly_attn.jobs.evaluate import evaluate_job
from anomaly_attn.jobs.job_config import config_for_checkpoint
from anomaly_attn.jobs.train import train_job
from anomaly_attn.training.checkpoint import load_module
from tests.conftest import REPO, compose_cfg, run_cli, tiny_overrides

TEXTURE_DEFECTS = {"crack", "glue", "hole", "scratch", "stain"}



@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny training run on textures/grass (not the default category, so evaluate must read it
    from the run's config.yaml) with attention at encoder.14."""
    run_dir = tmp_path_factory.mktemp("train_run")
    train_job(compose_cfg(tiny_overrides(category="grass", layer="encoder.14")), run_dir)
    return run_dir


def test_train_metrics_have_a_per_defect_breakdown(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert set(metrics["per_defect"]) == TEXTURE_DEFECTS
    assert set(metrics["controls"]["residual_l2"]["per_defect"]) == TEXTURE_DEFECTS
    for entry in metrics["per_defect"].values():
        assert entry["n_images"] == 2  # tiny_overrides: n_test_per_defect=2
        for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):
            assert 0.0 <= entry[key] <= 1.0
    # Image AUROC of one defect type = good vs that type, from the per-image scores.
    with (trained_run / "per_image_scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    good = [float(r["score_selected"]) for r in rows if r["defect_type"] == "good"]
    crack = [float(r["score_selected"]) for r in rows if r["defect_type"] == "crack"]
    pairs = [(c > g) + 0.5 * (c == g) for c in crack for g in good]
    assert metrics["per_defect"]["crack"]["image_auroc"] == pytest.approx(sum(pairs) / len(pairs))


def test_evaluate_rescores_a_checkpoint_at_a_new_layer_and_attention(
    trained_run: Path, tmp_path: Path
) -> None:
    ckpt = trained_run / "checkpoints" / "model.ckpt"
    overrides = [f"ckpt_path={ckpt}", "layer=encoder.15", "map=gradcam", "logger=csv"]
    cfg = config_for_checkpoint(compose_cfg(overrides, "evaluate"), overrides)
    assert cfg.category == "grass" and cfg.dataset.n_train == 48  # from the run's config.yaml
    metrics = evaluate_job(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["source_checkpoint"] == str(ckpt.resolve())
    assert (on_disk["layer"], on_disk["variant"], on_disk["category"]) == ("encoder.15", "gradcam", "grass")
    assert set(on_disk["per_defect"]) == TEXTURE_DEFECTS
    source = json.loads((trained_run / "metrics.json").read_text())
    # Same weights: the residual control is unchanged; the attention map (new layer/variant) is not.
    assert on_disk["controls"]["residual_l2"]["pixel_auroc"] == pytest.approx(
        source["controls"]["residual_l2"]["pixel_auroc"]
    )
    assert on_disk["pixel_auroc"] != pytest.approx(source["pixel_auroc"])
    # Thresholds re-chosen on the validation split and stored in the new run's model.ckpt.
    state = torch.load(tmp_path / "checkpoints" / "model.ckpt", weights_only=True)
    assert float(state["state_dict"]["image_thresholds"][0]) == pytest.approx(
        metrics["thresholds"]["selected"]["image"]
    )
    assert metrics["thresholds"]["selected"]["image"] != pytest.approx(
        source["thresholds"]["selected"]["image"]
    )
    assert state["hyper_parameters"]["layer"] == "encoder.15"
    assert (tmp_path / "figures" / "grid.png").exists() and (tmp_path / "per_image_scores.csv").exists()


def test_fixed_map_on_the_command_line_replaces_the_checkpoints_selected_map(
    trained_run: Path, tmp_path: Path
) -> None:
    # selection.map=fixed re-scores without selection: with layer=/attention= given, the map asked for;
    # without, the map the checkpoint carries (chosen on validation data when it was trained).
    ckpt = trained_run / "checkpoints" / "model.ckpt"
    source = json.loads((trained_run / "metrics.json").read_text())
    runs = {
        "asked": [f"ckpt_path={ckpt}", "selection.map=fixed", "layer=encoder.15", "map=gradcam"],
        "kept": [f"ckpt_path={ckpt}", "selection.map=fixed"],
    }
    written = {}
    for name, overrides in runs.items():
        overrides = [*overrides, "logger=csv"]
        cfg = config_for_checkpoint(compose_cfg(overrides, "evaluate"), overrides)
        evaluate_job(cfg, tmp_path / name, overrides)
        written[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert written["asked"]["selected_map"] == "gradcam@encoder.15[residual]"
    assert (written["asked"]["layer"], written["asked"]["variant"]) == ("encoder.15", "gradcam")
    assert written["kept"]["selected_map"] == source["selected_map"]


def test_lightning_checkpoints_load_with_weights_only_and_without_thresholds(trained_run: Path) -> None:
    for name in ("best.ckpt", "last.ckpt"):
        module = load_module(trained_run / "checkpoints" / name)
        assert module.layer == "encoder.14"
        assert torch.isnan(module.image_thresholds).all(), "Lightning checkpoints predate calibration"
    with pytest.raises(ValueError, match="no validation thresholds"):
        predict_folder(trained_run / "checkpoints" / "best.ckpt", trained_run / "figures", trained_run / "x")


def test_layer_glob_expands_against_the_checkpoints_backbone(trained_run: Path) -> None:
    ckpt = f"ckpt_path={trained_run / 'checkpoints' / 'model.ckpt'}"
    expanded = expand_sweep_overrides(["-m", ckpt, "layer=glob(encoder.1?)"], config_name="evaluate")
    assert expanded[-1] == "layer=" + ",".join(f"encoder.{i}" for i in range(10, 20))
    with pytest.raises(ValueError, match="cannot be overridden"):
        expand_sweep_overrides([ckpt, "model=mnist_ae", "layer=encoder.3"], config_name="evaluate")


def _random_images(folder: Path) -> dict[str, tuple[int, int]]:
    """Five images of different sizes and modes; returns {relative name: (height, width)}."""
    rng = np.random.default_rng(0)
    specs = {
        "rgb.png": (100, 150, 3),
        "gray.jpg": (40, 40, None),
        "nested/big.bmp": (300, 200, 3),
        "rgba.png": (77, 33, 4),
        "same_size.png": (64, 64, None),
    }
    for name, (height, width, channels) in specs.items():
        shape = (height, width) if channels is None else (height, width, channels)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / name)
    return {name: (height, width) for name, (height, width, _) in specs.items()}


def test_predict_writes_one_heatmap_map_and_score_per_image(trained_run: Path, tmp_path: Path) -> None:
    sizes = _random_images(tmp_path / "images")
    ckpt = trained_run / "checkpoints" / "model.ckpt"
    rows = predict_folder(ckpt, tmp_path / "images", tmp_path / "out", batch_size=2)
    heatmap_dir = tmp_path / "out" / "heatmaps"
    heatmaps = sorted(p.relative_to(heatmap_dir).as_posix() for p in heatmap_dir.rglob("*.png"))
    # input_dir's sub-folders are mirrored; a non-PNG keeps its extension (a.jpg and a.png stay apart).
    assert heatmaps == sorted(["rgb.png", "gray.jpg.png", "nested/big.bmp.png", "rgba.png", "same_size.png"])
    for name, (height, width) in sizes.items():
        with Image.open(heatmap_dir / (name if name.endswith(".png") else name + ".png")) as im:
            assert im.size == (width, height)
    with np.load(tmp_path / "out" / "maps.npz") as maps:
        assert {name: maps[name].shape for name in maps.files} == sizes
    with (tmp_path / "out" / "scores.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 5 and list(table[0]) == ["file", "anomaly_score", "predicted_label"]
    assert {row["file"] for row in table} == set(sizes)  # paths relative to input_dir
    threshold = float(torch.load(ckpt, weights_only=True)["state_dict"]["image_thresholds"][0])
    for row in table:
        assert int(row["predicted_label"]) == int(float(row["anomaly_score"]) >= threshold)
    assert [r["file"] for r in rows] == [r["file"] for r in table]


# Runs predict's entry point, then prints the Lightning modules the process imported.
PREDICT_THEN_LIST_LIGHTNING = """
import json, sys
from anomaly_attn.cli.predict import main
try:
    main()
except SystemExit as exit_:
    if exit_.code not in (0, None):
        raise
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning"))))
"""


def test_predict_imports_no_lightning_and_gives_the_test_steps_maps_and_scores(
    trained_run: Path, tmp_path: Path
) -> None:
    """predict in a fresh process on the run's own test images: no Lightning module is imported; its
    scores are the ones the Lightning test step wrote (per_image_scores.csv) and its maps those of the
    checkpoint loaded through Lightning (evaluate's loader)."""
    ckpt = trained_run / "checkpoints" / "model.ckpt"
    with (trained_run / "per_image_scores.csv").open() as handle:
        tested = {row["path"]: float(row["score_selected"]) for row in csv.DictReader(handle)}
    test_dir = Path(next(iter(tested))).parents[1]  # <category>/test/<defect>/<image>
    script = tmp_path / "predict_then_list_lightning.py"
    script.write_text(PREDICT_THEN_LIST_LIGHTNING)
    result = subprocess.run(
        [sys.executable, str(script), f"ckpt_path={ckpt}", f"input_dir={test_dir}",
         f"output_dir={tmp_path / 'out'}", "batch_size=16"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []

    with (tmp_path / "out" / "scores.csv").open() as handle:
        predicted = {row["file"]: float(row["anomaly_score"]) for row in csv.DictReader(handle)}
    assert len(predicted) == len(tested) == 14
    for path, score in tested.items():
        # The same images in another order within the batch: equal up to float rounding.
        assert predicted[Path(path).relative_to(test_dir).as_posix()] == pytest.approx(score, rel=1e-4)
    files = sorted(predicted)  # predict's order: one batch of all 14
    pixels = np.stack([np.asarray(open_image(test_dir / name, "L")) for name in files])
    images = torch.from_numpy(pixels)[:, None].float().div(255.0)
    expected = load_module(ckpt).engine.compute_maps(images)[0]["selected"]
    with np.load(tmp_path / "out" / "maps.npz") as maps:
        for index, name in enumerate(files):  # another process: equal up to float rounding (~1e-5)
            np.testing.assert_allclose(maps[name], expected[index, 0].numpy(), rtol=1e-4, atol=1e-5)


def test_predict_skips_an_unreadable_image_and_strict_makes_it_an_error(
    trained_run: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.new("L", (20, 20)).save(images / "sub" / "fine.png")
    (images / "broken.png").write_bytes(b"not an image")
    (images / "notes.txt").write_text("not an image either, and not an image file name")
    ckpt = trained_run / "checkpoints" / "model.ckpt"
    rows = predict_folder(ckpt, images, tmp_path / "out")
    assert [row["file"] for row in rows] == ["sub/fine.png"]
    assert (tmp_path / "out" / "heatmaps" / "sub" / "fine.png").exists()
    with pytest.raises(CorruptImageError, match="broken.png"):
        predict_folder(ckpt, images, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()
    # From the command line: exit 1 and one line naming the file, no traceback.
    result = run_cli(
        [f"ckpt_path={ckpt}", f"input_dir={images}", f"output_dir={tmp_path / 'cli'}", "strict=true"],
        cwd=tmp_path, module="anomaly_attn.predict",
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error == f"error: image files that do not decode under {images}, 1 file: broken.png (strict=true)"


@pytest.mark.slow
def test_evaluate_cli_multirun_over_one_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    ckpt = trained_run / "checkpoints" / "model.ckpt"
    # A second run directory: jobs of different checkpoints must not share (and overwrite) a folder,
    # although ckpt_path is left out of the folder names.
    other_run = tmp_path / "other_run"
    shutil.copytree(trained_run, other_run, ignore=shutil.ignore_patterns("wandb"))
    other_ckpt = other_run / "checkpoints" / "model.ckpt"
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            f"ckpt_path={ckpt},{other_ckpt}",
            "layer=glob(encoder.2*,exclude=encoder.2?)",  # = encoder.2 of the checkpoint
            "map=mean_abs_cam,gradcam",
            "logger=csv",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
        module="anomaly_attn.evaluate",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(p.read_text()) for p in sorted(sweep_dir.rglob("metrics.json"))]
    assert sorted((m["source_checkpoint"], m["layer"], m["variant"]) for m in metrics) == sorted(
        (str(c.resolve()), "encoder.2", a) for c in (ckpt, other_ckpt) for a in ("gradcam", "mean_abs_cam")
    )
