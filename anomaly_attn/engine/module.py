"""The LightningModule: a swappable reconstruction backbone, its losses, and test-time anomaly maps.

Training sees normal images only. Validation (held-out normal training images) drives checkpoint
selection and the thresholds; the test set is only ever scored.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from anomaly_attn.engine.losses import ReconstructionLoss, attention_loss
from anomaly_attn.maps import attention_map, image_scores, list_variants
from anomaly_attn.maps.selection import (
    CONTROL_MAPS,
    MapSpec,
    ScoreSpec,
    spec_from_attention_config,
    spec_maps,
)
from anomaly_attn.metrics import AnomalyImageMetrics, AnomalyPixelMetrics
from anomaly_attn.metrics.per_defect import PerDefectMetrics
from anomaly_attn.models import create_model, layer_shapes, resolve_layer

log = logging.getLogger(__name__)

# Maps whose metrics are also broken down per defect type (metrics.json `per_defect`).
PER_DEFECT_MAPS = ("attention", "residual_l2")


class AnomalyModule(pl.LightningModule):
    """Reconstruction model + gradient-attention anomaly maps.

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
        model_kwargs = dict(model)
        self.model = create_model(model_kwargs.pop("name"), **model_kwargs)
        self.layer = layer or self.model.default_layer
        resolve_layer(self.model, self.layer)  # fails early, listing the valid layers
        layer_shape = layer_shapes(self.model, model["image_size"], model["in_channels"])[self.layer]
        if len(layer_shape) != 3:
            # Allowed (a layer sweep covers every layer), but it cannot localize: say so.
            log.warning(
                "Layer %s of %s is flat (output %s, no spatial extent): its attention map is constant "
                "over each image (it ranks images, not pixels within one). `python -m anomaly_attn.layers "
                "model=%s` lists the spatial layers.",
                self.layer, model["name"], tuple(layer_shape), model["name"],
            )
        self.attention_cfg = dict(attention)
        variant = self.attention_cfg["variant"]
        if variant not in list_variants() and variant not in CONTROL_MAPS:
            raise ValueError(
                f"Unknown attention variant {variant!r}; valid: {sorted(list_variants())} "
                f"(gradient) or {sorted(CONTROL_MAPS)} (control maps)."
            )
        if self.attention_cfg.get("train_input", "same") not in ("same", "residual", "image"):
            raise ValueError(
                f"attention.train_input={self.attention_cfg['train_input']!r}; valid: same (the test-time "
                "map's input), residual, image"
            )
        # The map (and image score) that is calibrated, tested and predicted with: the configured one
        # until `set_selected_maps` installs the one chosen on validation data (selection.map=auto).
        self.map_spec: MapSpec = spec_from_attention_config(self.attention_cfg, self.layer)
        self.score_spec = ScoreSpec(
            self.map_spec,
            str((evaluation or {}).get("score", "max")),
            float((evaluation or {}).get("topk_percent", 1.0)),
        )
        self.reconstruction_loss = ReconstructionLoss(dict(loss_terms))
        self.optimizer_cfg = dict(optimizer or {"lr": 1e-3, "weight_decay": 0.0})
        self.evaluation = {"score": "max", "topk_percent": 1.0, "fpr_limit": 0.3, "highpass_sigma": 4.0}
        self.evaluation.update(evaluation or {})
        self.center_input = center_input
        self.threshold_quantile = threshold_quantile
        size, channels = model["image_size"], model["in_channels"]
        self.register_buffer("mean_image", torch.zeros(channels, size, size))
        # Decision thresholds per map kind, chosen on validation data by `calibrate` (nan = not yet).
        self.register_buffer("pixel_thresholds", torch.full((len(self.map_names),), float("nan")))
        self.register_buffer("image_thresholds", torch.full((len(self.map_names),), float("nan")))
        self._reset_test_metrics()
        # Speed options of the training step (anomaly_attn.engine.speed; set by the pipeline, off by default).
        self.channels_last = False
        self.compile_training = False

    # ----------------------------------------------------------------- speed options
    def configure_speed(self, channels_last: bool = False, compile_training: bool = False) -> None:
        """Train in the channels-last memory format (conv backbones only) and/or with a
        ``torch.compile``-d forward. Both apply to the fit only (``on_fit_start`` to ``on_fit_end``):
        selection, calibration, test and predict maps run on the eager model in the default format."""
        has_conv = any(isinstance(m, torch.nn.Conv2d) for m in self.model.modules())
        self.channels_last = bool(channels_last) and has_conv
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

    # ----------------------------------------------------------------- helpers
    @property
    def map_names(self) -> tuple[str, ...]:
        """'attention' (the configured map) first, then the controls."""
        return ("attention", *CONTROL_MAPS)

    def set_selected_maps(self, map_spec: MapSpec, score_spec: ScoreSpec) -> None:
        """Use ``map_spec`` as the anomaly map and ``score_spec`` as the image score from now on
        (chosen on validation data; thresholds must be calibrated again)."""
        self.map_spec, self.score_spec = map_spec, score_spec
        self.pixel_thresholds.fill_(float("nan"))
        self.image_thresholds.fill_(float("nan"))

    def selected_maps_state(self) -> dict[str, Any]:
        """The selected map and image score as plain data (stored in checkpoints)."""
        return {"map": self.map_spec.to_dict(), "score": self.score_spec.to_dict()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["selected_maps"] = self.selected_maps_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("selected_maps")
        if state is not None:
            self.map_spec = MapSpec.from_dict(state["map"])
            self.score_spec = ScoreSpec.from_dict(state["score"])
        # A control map registered after this checkpoint was trained (a user's `_module_`) has no threshold
        # in it yet: nan, as before calibration (evaluate calibrates again on validation data).
        weights = checkpoint.get("state_dict", {})
        for key in ("pixel_thresholds", "image_thresholds"):
            saved = weights.get(key)
            if saved is not None and len(saved) < len(self.map_names):
                missing = saved.new_full((len(self.map_names) - len(saved),), float("nan"))
                weights[key] = torch.cat([saved, missing])

    def set_mean_image(self, mean_image: Tensor) -> None:
        self.mean_image.copy_(mean_image.to(self.mean_image))

    def network_input(self, images: Tensor) -> Tensor:
        return images - self.mean_image if self.center_input else images

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
        so the map that is trained is the map that is tested; ``attention.train_input`` overrides it."""
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
        network_input = self._fit_input(images)
        out = self.__dict__.get("_compiled_model", self.model)(network_input)
        rec = self.reconstruction_loss(out.reconstruction.float(), images)
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

    # ----------------------------------------------------------------- maps
    def compute_maps(self, images: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """All anomaly maps (B×1×H×W) for a batch, and the reconstruction.

        The selected (or configured) map is under 'attention', the controls under their names, and the
        map the image score is read from under 'image_score_map' when it is another map.
        Always float32, also inside a bf16-mixed trainer's test/predict step (autocast is off here).
        """
        with torch.autocast(images.device.type, enabled=False):
            return self._compute_maps(images.float())

    def _compute_maps(self, images: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        with torch.no_grad():
            network_input = self.network_input(images)
            reconstruction = self.model(network_input).reconstruction
        specs = [self.map_spec, *(MapSpec(source=name) for name in CONTROL_MAPS)]
        if self.score_spec.map != self.map_spec:
            specs.append(self.score_spec.map)
        rendered = spec_maps(
            self.model,
            images,
            reconstruction,
            network_input,
            specs,
            float(self.evaluation["highpass_sigma"]),
            self.attention_cfg.get("latent_dims"),
        )
        maps = {"attention": rendered[0], **dict(zip(CONTROL_MAPS, rendered[1:], strict=False))}
        if len(rendered) > len(CONTROL_MAPS) + 1:
            maps["image_score_map"] = rendered[-1]
        return maps, reconstruction

    def map_scores(self, maps: dict[str, Tensor]) -> dict[str, Tensor]:
        """Image scores (B) of every map in ``map_names``: the selected image score for 'attention',
        ``evaluation.score`` for the controls."""
        scores = {
            name: image_scores(maps[name], self.evaluation["score"], float(self.evaluation["topk_percent"]))
            for name in CONTROL_MAPS
        }
        scores["attention"] = self.score_spec.scores(maps.get("image_score_map", maps["attention"]))
        return scores

    # ----------------------------------------------------------------- calibration (validation only)
    def calibrate(self, val_loader) -> dict[str, dict[str, float]]:
        """Choose pixel and image thresholds per map kind on held-out NORMAL validation images.

        Threshold = the ``threshold_quantile`` quantile of the validation values: with normal data
        only, this bounds the false-positive rate on normal images at about 1 - quantile.
        """
        was_training = self.training
        self.eval()
        pixel_values: dict[str, list[np.ndarray]] = {name: [] for name in self.map_names}
        score_values: dict[str, list[np.ndarray]] = {name: [] for name in self.map_names}
        for batch in val_loader:
            images = batch["image"].to(self.device)
            maps, _ = self.compute_maps(images)
            scores = self.map_scores(maps)
            for name in self.map_names:
                pixel_values[name].append(maps[name].flatten().cpu().numpy())
                score_values[name].append(scores[name].cpu().numpy())
        if not any(len(v) for v in pixel_values.values()):
            raise RuntimeError("Calibration needs a non-empty validation split (dataset.val_fraction > 0).")
        q = self.threshold_quantile
        for i, name in enumerate(self.map_names):
            self.pixel_thresholds[i] = float(np.quantile(np.concatenate(pixel_values[name]), q))
            self.image_thresholds[i] = float(np.quantile(np.concatenate(score_values[name]), q))
        self.train(was_training)
        return {
            name: {
                "pixel": float(self.pixel_thresholds[i]),
                "image": float(self.image_thresholds[i]),
            }
            for i, name in enumerate(self.map_names)
        }

    # ----------------------------------------------------------------- test
    def _reset_test_metrics(self) -> None:
        fpr_limit = float(self.evaluation["fpr_limit"])
        self.pixel_metrics = torch.nn.ModuleDict(
            {name: AnomalyPixelMetrics(fpr_limit=fpr_limit) for name in self.map_names}
        )
        self.image_metrics = torch.nn.ModuleDict({name: AnomalyImageMetrics() for name in self.map_names})
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
        maps, reconstruction = self.compute_maps(images)
        has_mask = batch.get("has_mask")
        with_masks = torch.ones(len(images), dtype=torch.bool, device=images.device)
        if has_mask is not None:
            with_masks = torch.as_tensor(has_mask, device=images.device).bool()
        # An image without pixel ground truth is left out of the pixel metrics (its own), not the run.
        self.images_without_masks += [batch["path"][i] for i in range(len(images)) if not with_masks[i]]
        self.masked_anomalous += int((with_masks & (labels.to(with_masks.device) > 0)).sum())
        scores = self.map_scores(maps)
        for name in self.map_names:
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
            row.update({f"score_{name}": float(scores[name][i]) for name in self.map_names})
            self.per_image_rows.append(row)
        return {"maps": maps, "reconstruction": reconstruction, "scores": scores}

    @property
    def has_pixel_ground_truth(self) -> bool:
        """Whether the test set had at least one anomalous image with a mask (pixel metrics need one)."""
        return self.masked_anomalous > 0

    def test_metrics(self) -> dict[str, Any]:
        """metrics.json content for the configured map (top level) and the control maps (`controls`)."""
        results: dict[str, Any] = {}
        for i, name in enumerate(self.map_names):
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
        attention = results.pop("attention")
        return {**attention, "controls": results}
