"""Figures of test-time anomaly maps: the qualitative grid and per-image overlays."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np

from anomaly_attn.reporting.figures import colour_limit, overlay_figure, save_grid, save_samples

log = logging.getLogger(__name__)


class AnomalyMapVisualizer(pl.Callback):
    """Writes ``figures/grid.png`` (test images over their attention overlays, like the research code's
    README figure), ``figures/samples.npz`` (the grid's samples, for cross-run figures in reports),
    ``figures/overlays/*.png`` (one image with its map and ground-truth contour), and logs a few
    overlays with prediction/ground-truth masks to W&B.

    Memory stays bounded: at most ``max_overlays`` samples are written as they stream by, and the grid
    keeps ``grid_images`` samples, defective ones (one per defect type first) preferred.
    """

    def __init__(
        self, output_dir: str | Path, max_overlays: int = 64, grid_images: int = 8, wandb_images: int = 8
    ) -> None:
        self.output_dir = Path(output_dir)
        self.max_overlays = max_overlays
        self.grid_images = grid_images
        self.wandb_images = wandb_images
        self._grid: list[dict[str, Any]] = []
        self._written = 0

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._grid, self._written = [], 0

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.is_global_zero or outputs is None:
            return
        maps = outputs["maps"]["selected"].detach().float().cpu()
        images = batch["image"].detach().float().cpu()
        masks = batch["mask"].detach().float().cpu()
        threshold = float(pl_module.pixel_thresholds[0])
        overlay_dir = self.output_dir / "overlays"
        for i in range(len(images)):
            sample = {
                "image": images[i].numpy(),
                "mask": masks[i, 0].numpy(),
                "map": maps[i, 0].numpy(),
                "label": int(batch["label"][i]),
                "defect_type": batch["defect_type"][i],
                "path": batch["path"][i],
                "score": float(outputs["scores"]["selected"][i]),
            }
            if self._written < self.max_overlays:
                overlay_dir.mkdir(parents=True, exist_ok=True)
                name = f"{self._written:04d}_{sample['defect_type']}_{Path(sample['path']).stem}.png"
                overlay_figure(sample, overlay_dir / name, threshold=threshold, vmax=colour_limit(threshold))
                self._written += 1
            self._offer_to_grid(sample)

    def _offer_to_grid(self, sample: dict[str, Any]) -> None:
        """Keep a bounded, diverse set: defective images of unseen defect types first."""
        if len(self._grid) < self.grid_images:
            self._grid.append(sample)
            return
        seen = {s["defect_type"] for s in self._grid}
        if sample["label"] == 1 and sample["defect_type"] not in seen:
            counts: dict[str, int] = {}
            for s in self._grid:
                counts[s["defect_type"]] = counts.get(s["defect_type"], 0) + 1
            # Replace a normal sample, else one of the most repeated defect type.
            victims = [i for i, s in enumerate(self._grid) if s["label"] == 0]
            if not victims:
                most = max(counts, key=counts.get)
                if counts[most] < 2:
                    return
                victims = [i for i, s in enumerate(self._grid) if s["defect_type"] == most]
            self._grid[victims[-1]] = sample

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self._grid:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        grid = sorted(self._grid, key=lambda s: (s["label"] == 0, s["defect_type"]))
        threshold = float(pl_module.pixel_thresholds[0])
        save_grid(grid, self.output_dir / "grid.png", vmax=colour_limit(threshold))
        save_samples(grid, self.output_dir / "samples.npz", threshold)
        log.info("Wrote %s", self.output_dir / "grid.png")
        self._log_wandb(trainer, grid, threshold)

    def _log_wandb(self, trainer: pl.Trainer, grid: list[dict[str, Any]], threshold: float) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or self.wandb_images <= 0:
            return
        import wandb

        images = []
        for sample in grid[: self.wandb_images]:
            picture = np.clip(sample["image"].transpose(1, 2, 0), 0, 1)
            prediction = (sample["map"] >= threshold).astype(np.uint8) if np.isfinite(threshold) else None
            masks = {
                "ground_truth": {"mask_data": sample["mask"].astype(np.uint8), "class_labels": {1: "defect"}}
            }
            if prediction is not None:
                masks["prediction"] = {"mask_data": prediction, "class_labels": {1: "predicted"}}
            images.append(
                wandb.Image(
                    (picture * 255).astype(np.uint8).squeeze(),
                    masks=masks,
                    caption=f"{sample['defect_type']} score={sample['score']:.3g}",
                )
            )
        loggers[0].experiment.log({"test/overlays": images})
