"""Tiny end-to-end runs of `anomaly_attn.train` on the embedded textures."""

from __future__ import annotations

import json
from pathlib import Path

from anomaly_attn import provenance
from anomaly_attn.jobs.train import train_job
from tests.conftest import compose_cfg, run_cli, tiny_overrides

TOP_LEVEL_KEYS = {
    "image_auroc",
    "pixel_auroc",
    "pixel_aupro",
    "image_f1_max",
    "pixel_f1_max",
    "pixel_iou",
    "dataset",
    "category",
    "model",
    "layer",
    "variant",
    "loss",
    "seed",
    "epochs",
    "timing",
    "provenance",
}



def test_train_job_writes_a_complete_run_directory(tmp_path: Path) -> None:
    defaults = {"faithfulness.images": "16"}
    cfg = compose_cfg(tiny_overrides(category="brick", logger="wandb", layer="encoder.14", **defaults))
    metrics = train_job(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics, default=float))
    assert TOP_LEVEL_KEYS <= set(on_disk)
    for name in ("residual_l2", "residual_ssim", "residual_highpass", "image_highpass"):
        assert {"pixel_auroc", "pixel_aupro", "image_auroc"} <= set(on_disk["controls"][name])
    for key in ("pixel_auroc", "pixel_aupro", "image_auroc"):
        assert 0.0 <= on_disk[key] <= 1.0
    assert on_disk["layer"] == "encoder.14" and on_disk["category"] == "brick"
    assert {k: on_disk["provenance"][k] for k in ("version", "git_commit")} == {
        k: provenance()[k] for k in ("version", "git_commit")
    }
    timings = {"train_images_per_s", "test_images_per_s", "fit_s", "test_s", "intervals_s",
               "faithfulness_s"}
    assert set(on_disk["timing"]) == timings
    # Every test metric of the selected map and of each control has a bootstrap interval around it, and
    # the paired selected - residual_l2 difference has one around the difference of the point estimates.
    intervals = on_disk["intervals"]
    assert intervals["resamples"] == 1000 and intervals["level"] == 0.95
    for name, point in [("selected", on_disk), *on_disk["controls"].items()]:
        for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max", "pixel_f1_max"):
            entry = intervals["maps"][name][key]
            assert 0.0 <= entry["low"] <= entry["high"] <= 1.0 and entry["std"] >= 0, (name, key)
        for key in ("image_auroc", "pixel_auroc"):  # U-statistics: the bootstrap centres on them
            entry = intervals["maps"][name][key]
            assert entry["low"] <= point[key] + 1e-9 and point[key] - 1e-9 <= entry["high"], (name, key)
    assert (tmp_path / "interval_parts.npz").exists()  # what report --compare pairs across runs
    paired = intervals["paired"]["selected - residual_l2"]["pixel_auroc"]
    difference = on_disk["pixel_auroc"] - on_disk["controls"]["residual_l2"]["pixel_auroc"]
    assert paired["low"] - 1e-9 <= difference <= paired["high"] + 1e-9
    # Faithfulness on the anomalous test images (10 here): the selected map, the best map of each
    # attention variant selection scored (at the fixed layer encoder.14), residual_l2 and the model-free
    # image high-pass, each against a random map, and with the model randomized.
    faithful = on_disk["faithfulness"]
    assert faithful["n_images"] == 10 and len(faithful["test_indices"]) == 10 and "seconds" not in faithful
    controls = {"selected", "residual_l2", "image_highpass"}
    variants = set(faithful["maps"]) - controls
    assert controls < set(faithful["maps"]) and variants <= set(cfg.selection.variants)
    for name in set(faithful["maps"]) - controls:
        assert faithful["maps"][name]["label"].startswith(f"{name}@encoder.14")
    assert faithful["maps"]["image_highpass"]["randomization"]["verdict"] == "model-independent"
    for entry in faithful["maps"].values():
        assert len(entry["deletion_curve"]) == 5 and "low" in entry["deletion_vs_random"]
        assert len(entry["randomization"]["spearman"]) == 4
    assert on_disk["timing"]["faithfulness_s"] > 0
    assert on_disk["timing"]["train_images_per_s"] > 0
    # trainer=cpu defaults: channels_last on; float32 on every CPU (bf16 only when asked for).
    assert on_disk["training"] == {"precision": "32-true", "channels_last": True}
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "checkpoints" / "model.ckpt").exists()
    assert (tmp_path / "figures" / "grid.png").stat().st_size > 1000
    assert len(list((tmp_path / "figures" / "overlays").glob("*.png"))) == 4
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "per_image_scores.csv").exists()
    assert list((tmp_path / "csv").rglob("metrics.csv"))
    assert list((tmp_path / "wandb").glob("offline-run-*")), "one offline W&B run per job"
    # Thresholds come from validation data and are stored in the checkpoint for `predict`.
    import torch

    state = torch.load(tmp_path / "checkpoints" / "model.ckpt", weights_only=True)
    assert torch.isfinite(state["state_dict"]["pixel_thresholds"]).all()


def test_category_glob_times_layers_launches_six_jobs(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            "dataset=textures",
            "category=glob(*)",
            "layer=encoder.14,encoder.21",
            *tiny_overrides(),
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = sorted(sweep_dir.rglob("metrics.json"))
    assert len(metrics) == 6
    pairs = {(json.loads(p.read_text())["category"], json.loads(p.read_text())["layer"]) for p in metrics}
    assert pairs == {(c, l) for c in ("brick", "grass", "gravel") for l in ("encoder.14", "encoder.21")}


def test_unknown_category_and_layer_fail_before_training(tmp_path: Path) -> None:
    result = run_cli(["category=marble", *tiny_overrides()], cwd=tmp_path)
    assert result.returncode != 0
    assert "marble" in result.stderr and "brick" in result.stderr and "gravel" in result.stderr
    result = run_cli(["layer=encoder.99", *tiny_overrides()], cwd=tmp_path)
    assert result.returncode != 0
    assert "encoder.99" in result.stderr and "encoder.21" in result.stderr
    assert not list(tmp_path.rglob("*.ckpt")), "nothing trained"
