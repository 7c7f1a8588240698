"""The LightningModule: a swappable reconstruction backbone, its losses, training and the test step.

The anomaly maps, image scores and thresholds are its map engine's (``anomaly_attn.maps.engine``), built
from the same hyper-parameters; the engine's mean image and thresholds are this module's buffers, so
checkpoints carry them. Training sees normal images only. Validation (held-out normal training images)
drives checkpoint selection and the thresholds; the test set is only ever scored.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from anomaly_attn.maps import CONTROL_MAPS, attention_map
from anomaly_attn.maps.checkpoints import pad_thresholds
from anomaly_attn.maps.engine import TENSOR_KEYS, MapEngine
from anomaly_attn.maps.feature_memory import FeatureMemory
from anomaly_attn.metrics import AnomalyImageMetrics, AnomalyPixelMetrics
from anomaly_attn.metrics.interval_inputs import IntervalInputs
from anomaly_attn.metrics.per_defect import PerDefectMetrics
from anomaly_attn.models.registry import model_from_config
from anomaly_attn.training.losses import ReconstructionLoss, attention_loss
from anomaly_attn.training.restoration import Restoration

log = logging.getLogger(__name__)

# Maps whose metrics are also broken down per defect type (metrics.json `per_defect`).
PER_DEFECT_MAPS = ("selected", "residual_l2")


class AnomalyModule(pl.LightningModule):
    """Reconstruction model and its losses; anomaly maps through ``self.engine`` (a ``MapEngine``).

    Args:
        model: backbone config (``name`` plus the backbone's kwargs), see ``anomaly_attn.models``.
        loss_terms: reconstruction loss terms and weights, e.g. ``{"mse": 1.0, "ssim": 0.5}``.
        attention: the attention config group as a dict (variant, input, layer, training loss, ...).
        layer: encoder layer name for attention; None = the backbone's default layer.
        optimizer: ``lr`` and ``weight_decay`` for Adam.
        evaluation: image score reduction, AUPRO FPR limit, high-pass sigma.
        center_input: subtract the training mean image from the network input.
        threshold_quantile: quantile of validation maps/scores used as decision thresholds.
    """

    def __init__(
        self,
        model: dict[str, Any],
        loss_terms: dict[str, float],
        attention: dict[str, Any],
        layer: str | None = None,
        optimizer: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        center_input: bool = True,
        threshold_quantile: float = 0.99,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = model_from_config(model)
        # The maps: layer, attention, selected map and score, evaluation, centring, thresholds.
        self.engine = MapEngine.from_hparams(self.model, self.hparams)
        # Set by the job before testing: what the test step keeps for the bootstrap intervals.
        self.interval_inputs: IntervalInputs | None = None
        # The engine's tensors are this module's buffers: saved in its checkpoints and moved with it.
        for key in TENSOR_KEYS:
            self.register_buffer(key, getattr(self.engine, key))
        if self.attention_cfg.get("train_input", "same") not in ("same", "residual", "image"):
            raise ValueError(
                f"map.train_input={self.attention_cfg['train_input']!r}; valid: same (the test-time "
                "map's input), residual, image"
            )
        self.reconstruction_loss = ReconstructionLoss(dict(loss_terms))
        self.optimizer_cfg = dict(optimizer or {"lr": 1e-3, "weight_decay": 0.0})
        self._reset_test_metrics()
        # torch.compile of the training forward (training.speed; set by the pipeline, off by default).
        self.compile_training = False
        # Restoration training (training.restoration; set by the pipeline, off by default): corrupted
        # inputs, clean targets.
        self.restoration: Restoration | None = None

    # The engine's settings, read where the module needs them (one copy, the engine's).
    @property
    def layer(self) -> str:
        return self.engine.layer

    @property
    def attention_cfg(self) -> dict[str, Any]:
        return self.engine.attention_cfg

    @property
    def evaluation(self) -> dict[str, Any]:
        return self.engine.evaluation

    @property
    def channels_last(self) -> bool:
        """Channels-last memory format, for the fit and the engine's maps alike (``configure_speed``)."""
        return self.engine.channels_last

    # ----------------------------------------------------------------- speed options
    def configure_speed(self, channels_last: bool = False, compile_training: bool = False) -> None:
        """Train in the channels-last memory format (conv backbones only) and/or with a
        ``torch.compile``-d forward. ``torch.compile`` applies to the fit only; channels-last also to the
        map engine (selection, calibration, test maps), which computes them on the eager model."""
        has_conv = any(isinstance(m, torch.nn.Conv2d) for m in self.model.modules())
        self.engine.channels_last = bool(channels_last) and has_conv
        self.compile_training = bool(compile_training)

    def on_fit_start(self) -> None:
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.compile_training:
            # Kept out of the module tree (no `_orig_mod.` keys in checkpoints, hooks stay on self.model).
            object.__setattr__(self, "_compiled_model", torch.compile(self.model))

    def on_fit_end(self) -> None:
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)
        self.__dict__.pop("_compiled_model", None)

    def _fit_input(self, images: Tensor) -> Tensor:
        """The network input of a training/validation batch, in the training memory format."""
        network_input = self.network_input(images)
        if self.channels_last and network_input.dim() == 4:
            network_input = network_input.contiguous(memory_format=torch.channels_last)
        return network_input

    # ----------------------------------------------------------------- the map engine's state
    def _apply(self, fn, recurse: bool = True):
        # .to(), .half(), ... replace the buffers with new tensors: the engine reads the new ones.
        super()._apply(fn, recurse)
        if "engine" in self.__dict__:
            self.engine.use_tensors(*(getattr(self, key) for key in TENSOR_KEYS))
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["selected_maps"] = self.engine.selected_maps_state()
        memory = self.engine.memory_state()
        if memory is not None:
            checkpoint["feature_memory"] = memory

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.engine.load_selected_maps(checkpoint.get("selected_maps"))
        self.engine.memory = FeatureMemory.from_state(checkpoint.get("feature_memory"))
        pad_thresholds(checkpoint.get("state_dict", {}), len(self.engine.map_names))

    def set_mean_image(self, mean_image: Tensor) -> None:
        self.engine.set_mean_image(mean_image)

    def network_input(self, images: Tensor) -> Tensor:
        return self.engine.network_input(images)

    def forward(self, images: Tensor):
        return self.model(self.network_input(images))

    def _attention_weight_now(self) -> float:
        cfg = self.attention_cfg
        weight = float(cfg.get("weight", 0.0))
        if weight <= 0 or cfg.get("loss", "none") == "none" or cfg.get("schedule") != "every_n_steps":
            return 0.0
        if cfg["variant"] in CONTROL_MAPS:
            return 0.0
        return weight if self.global_step % max(int(cfg.get("every_n_steps", 1)), 1) == 0 else 0.0

    def attention_training_input(
        self, images: Tensor, network_input: Tensor, reconstruction: Tensor
    ) -> Tensor:
        """What the training-time attention loss differentiates: by default the same input as the
        test-time map (the residual ``x − x̂``, reconstruction detached, or the network's image input),
        so the map that is trained is the map that is tested; ``map.train_input`` overrides it."""
        choice = self.attention_cfg.get("train_input", "same")
        source = self.attention_cfg.get("input", "residual") if choice == "same" else choice
        return images - reconstruction.detach() if source == "residual" else network_input

    def attention_training_loss(self, network_input: Tensor) -> Tensor:
        """Attention loss on normal training images (differentiable; second order if configured).

        It runs one extra encoder forward in train mode. Accepted side effects: encoder BatchNorm
        layers (unet, mnist_ae, timm_ae; conv_ae's InstanceNorm keeps no running statistics) update
        their running statistics twice from the same batch (an effective momentum of 0.19 instead
        of 0.1 on those steps), and each image's map depends on its batch-mates through the batch
        statistics, which a loss averaged over the batch does not mind. Test-time maps run in eval mode.
        """
        cfg = self.attention_cfg
        maps = attention_map(
            self.model,
            network_input,
            self.layer,
            cfg["variant"],
            create_graph=bool(cfg.get("second_order", False)),
            latent_dims=cfg.get("latent_dims"),
        )
        # beta belongs to mean_std only; the other losses take no options.
        options = {"beta": float(cfg.get("beta", 0.5))} if cfg["loss"] == "mean_std" else {}
        return attention_loss(cfg["loss"], maps, **options)

    # ----------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        images = batch["image"]
        inputs = images if self.restoration is None else self.restoration.corrupt(images, self.global_step)
        network_input = self._fit_input(inputs)
        out = self.__dict__.get("_compiled_model", self.model)(network_input)
        rec = self.reconstruction_loss(out.reconstruction.float(), images)  # the clean image is the target
        loss = rec + out.kl
        weight = self._attention_weight_now()
        if weight > 0:
            # Attention maps in float32 also under bf16 autocast (trainer.precision / cpu_bf16).
            with torch.autocast(images.device.type, enabled=False):
                att = self.attention_training_loss(
                    self.attention_training_input(images, network_input, out.reconstruction.float())
                )
            loss = loss + weight * att
            self.log("train/attention_loss", att, on_step=True, on_epoch=False)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Non-finite training loss ({loss.item()}) at step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}). Lower the learning rate, e.g. "
                f"optimizer.lr={self.optimizer_cfg['lr'] / 10:g} (now {self.optimizer_cfg['lr']:g})."
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images))
        self.log("train/reconstruction", rec, on_step=False, on_epoch=True, batch_size=len(images))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        images = batch["image"]
        out = self.model(self._fit_input(images))
        loss = self.reconstruction_loss(out.reconstruction.float(), images) + out.kl
        # sync_dist: under DDP every process must see the same val_loss to pick the same best checkpoint.
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(images), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(
            self.model.parameters(),
            lr=float(self.optimizer_cfg["lr"]),
            weight_decay=float(self.optimizer_cfg.get("weight_decay", 0.0)),
        )

    # ----------------------------------------------------------------- calibration (validation only)
    def calibrate(self, val_loader) -> dict[str, dict[str, float]]:
        """Pixel and image thresholds per map kind on held-out normal validation images
        (``MapEngine.calibrate``), stored in this module's buffers."""
        return self.engine.calibrate(val_loader)

    # ----------------------------------------------------------------- test
    def _reset_test_metrics(self) -> None:
        fpr_limit = float(self.evaluation["fpr_limit"])
        self.pixel_metrics = torch.nn.ModuleDict(
            {name: AnomalyPixelMetrics(fpr_limit=fpr_limit) for name in self.engine.map_names}
        )
        self.image_metrics = torch.nn.ModuleDict(
            {name: AnomalyImageMetrics() for name in self.engine.map_names}
        )
        # A plain dict: test-time state, not part of the model's modules or checkpoints.
        self.per_defect_metrics = {
            name: PerDefectMetrics(fpr_limit, self._test_defect_types()) for name in PER_DEFECT_MAPS
        }
        self.per_image_rows: list[dict[str, Any]] = []
        self.images_without_masks: list[str] = []
        self.masked_anomalous = 0

    def on_test_epoch_start(self) -> None:
        self._reset_test_metrics()
        self.pixel_metrics.to(self.device)
        self.image_metrics.to(self.device)
        for metrics in self.per_defect_metrics.values():
            metrics.to(self.device)

    def _test_defect_types(self) -> list[str]:
        """The test set's defect types, so that every process creates the same per-defect metrics."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        test_set = getattr(datamodule, "test_set", None)
        return sorted({record.defect_type for record in test_set.records}) if test_set is not None else []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        images, masks, labels = batch["image"], batch["mask"], batch["label"]
        maps, reconstruction = self.engine.compute_maps(images)
        has_mask = batch.get("has_mask")
        with_masks = torch.ones(len(images), dtype=torch.bool, device=images.device)
        if has_mask is not None:
            with_masks = torch.as_tensor(has_mask, device=images.device).bool()
        # An image without pixel ground truth is left out of the pixel metrics (its own), not the run.
        self.images_without_masks += [batch["path"][i] for i in range(len(images)) if not with_masks[i]]
        self.masked_anomalous += int((with_masks & (labels.to(with_masks.device) > 0)).sum())
        scores = self.engine.map_scores(maps)
        if self.interval_inputs is not None:
            self.interval_inputs.update(maps, masks, scores, labels, with_masks, paths=list(batch["path"]))
        for name in self.engine.map_names:
            self.image_metrics[name].update(scores[name], labels)
            if bool(with_masks.any()):
                self.pixel_metrics[name].update(maps[name][with_masks], masks[with_masks])
        for name in PER_DEFECT_MAPS:
            self.per_defect_metrics[name].update(
                maps[name], masks, scores[name], list(batch["defect_type"]), with_masks.tolist()
            )
        for i in range(len(images)):
            row = {
                "path": batch["path"][i],
                "defect_type": batch["defect_type"][i],
                "label": int(labels[i]),
            }
            if "defect_probability" in batch:  # ELPV: the annotators' probability (a float per image)
                row["defect_probability"] = float(batch["defect_probability"][i])
            row.update({f"score_{name}": float(scores[name][i]) for name in self.engine.map_names})
            self.per_image_rows.append(row)
        return {"maps": maps, "reconstruction": reconstruction, "scores": scores}

    @property
    def has_pixel_ground_truth(self) -> bool:
        """Whether the test set had at least one anomalous image with a mask (pixel metrics need one)."""
        return self.masked_anomalous > 0

    def test_metrics(self) -> dict[str, Any]:
        """metrics.json content for the configured map (top level) and the control maps (`controls`)."""
        results: dict[str, Any] = {}
        for i, name in enumerate(self.engine.map_names):
            entry: dict[str, float] = {}
            image = self.image_metrics[name].compute()
            entry["image_auroc"] = float(image["image_auroc"])
            entry["image_f1_max"] = float(image["image_f1_max"])
            if self.has_pixel_ground_truth:
                pixel_metric = self.pixel_metrics[name]
                pixel = pixel_metric.compute()
                entry["pixel_auroc"] = float(pixel["pixel_auroc"])
                entry["pixel_aupro"] = float(pixel["pixel_aupro"])
                entry["pixel_f1_max"] = float(pixel["pixel_f1_max"])
                threshold = float(self.pixel_thresholds[i])
                entry["pixel_iou"] = (
                    float(pixel_metric.iou(threshold)) if np.isfinite(threshold) else float("nan")
                )
            results[name] = entry
        for name in PER_DEFECT_MAPS:
            results[name]["per_defect"] = self.per_defect_metrics[name].compute(self.has_pixel_ground_truth)
        selected = results.pop("selected")
        return {**selected, "controls": results}
