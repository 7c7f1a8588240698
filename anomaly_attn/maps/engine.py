"""The map engine: a trained model's anomaly maps and image scores for a batch, in plain torch.

:class:`MapEngine` holds what makes a run's maps: the backbone, the attention layer and config, the
selected map and image score (:mod:`anomaly_attn.maps.specs`, chosen on validation data), the evaluation
post-processing, the training mean image (centring) and the validation thresholds. The LightningModule
owns one for its calibration and test step, map selection calls it for every candidate's base maps, and
``predict`` builds one from a checkpoint with :meth:`MapEngine.from_checkpoint`, without Lightning.

    engine = MapEngine.from_checkpoint("RUN/checkpoints/model.ckpt")
    maps, reconstruction = engine.compute_maps(images)   # 'selected' (the selected map) + the controls
    scores = engine.map_scores(maps)                     # one score per image and map
    anomalous = scores["selected"] >= engine.image_thresholds[0]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from anomaly_attn.common.progress import progress
from anomaly_attn.maps.checkpoints import check_checkpoint_path, pad_thresholds, read_checkpoint
from anomaly_attn.maps.controls import CONTROL_MAPS, DEFAULT_HIGHPASS_SIGMA
from anomaly_attn.maps.feature_memory import FeatureMemory
from anomaly_attn.maps.gradient import attention_map, list_variants
from anomaly_attn.maps.multilayer import attention_maps_all_layers, layer_gradients, maps_from_gradients
from anomaly_attn.maps.postprocess import image_scores
from anomaly_attn.maps.specs import FEATURE_MEMORY, MapSpec, ScoreSpec, render, spec_from_map_config
from anomaly_attn.models import layer_shapes, resolve_layer
from anomaly_attn.models.registry import model_from_config
from anomaly_attn.run.record import RENAMED_VARIANTS

log = logging.getLogger(__name__)

# Evaluation keys and their defaults (conf/config.yaml `evaluation` says the same).
EVALUATION_DEFAULTS = {
    "score": "max", "topk_percent": 1.0, "fpr_limit": 0.3, "highpass_sigma": DEFAULT_HIGHPASS_SIGMA
}
# The engine's tensors, saved in checkpoints under these state-dict keys.
TENSOR_KEYS = ("mean_image", "pixel_thresholds", "image_thresholds")
# A base map: ("attention", layer, variant, input), ("feature_memory", layer) or (control name,); see
# MapSpec.base_key.
BaseKey = tuple[str, ...]


class MapEngine:
    """Anomaly maps and image scores of ``model`` (see the module docstring).

    Args:
        model: a backbone of ``anomaly_attn.models`` (reconstruction, latent ``s``, named layers).
        image_size, in_channels: the model's input (the mean image's shape).
        attention: the attention config (variant, input, smoothing_sigma, fusion, latent_dims, ...).
        layer: encoder layer of the attention map; None = the backbone's default layer.
        evaluation: image score reduction, AUPRO FPR limit, high-pass sigma (``EVALUATION_DEFAULTS``).
        center_input: subtract the training mean image (``set_mean_image``) from the network input.
        threshold_quantile: quantile of validation maps/scores that ``calibrate`` takes as thresholds.
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: int,
        in_channels: int,
        attention: Mapping[str, Any],
        layer: str | None = None,
        evaluation: Mapping[str, Any] | None = None,
        center_input: bool = True,
        threshold_quantile: float = 0.99,
    ) -> None:
        self.model = model
        self.layer = layer or model.default_layer
        resolve_layer(model, self.layer)  # fails early, listing the valid layers
        layer_shape = layer_shapes(model, image_size, in_channels)[self.layer]
        if len(layer_shape) != 3:
            # Allowed (a layer sweep covers every layer), but it cannot localize: say so.
            name = getattr(model, "registry_name", "") or type(model).__name__
            log.warning(
                "Layer %s of %s is flat (output %s, no spatial extent): its attention map is constant "
                "over each image (it ranks images, not pixels within one). `python -m anomaly_attn.layers "
                "model=%s` lists the spatial layers.",
                self.layer, name, tuple(layer_shape), name,
            )
        self.attention_cfg = dict(attention)
        # A checkpoint from before 0.2 names its variant by the old name.
        variant = RENAMED_VARIANTS.get(attention["variant"], attention["variant"])
        self.attention_cfg["variant"] = variant
        if variant not in list_variants() and variant not in CONTROL_MAPS:
            raise ValueError(
                f"Unknown attention variant {variant!r}; valid: {sorted(list_variants())} "
                f"(gradient) or {sorted(CONTROL_MAPS)} (control maps)."
            )
        self.evaluation = {**EVALUATION_DEFAULTS, **(evaluation or {})}
        # The map (and image score) that is calibrated, tested and predicted with: the configured one
        # until `set_selected_maps` installs the one chosen on validation data (selection.map=auto).
        self.map_spec, self.score_spec = self._configured_specs()
        self.image_size, self.in_channels = image_size, in_channels
        self.center_input = center_input
        self.threshold_quantile = threshold_quantile
        self.mean_image = torch.zeros(in_channels, image_size, image_size)
        # Decision thresholds per map kind, chosen on validation data by `calibrate` (nan = not yet).
        self.pixel_thresholds = torch.full((len(self.map_names),), float("nan"))
        self.image_thresholds = torch.full((len(self.map_names),), float("nan"))
        # Compute maps in the channels-last (NHWC) memory format: oneDNN's faster convolutions on CPUs
        # (trainer.channels_last, set by the LightningModule's configure_speed; predict's channels_last).
        self.channels_last = False
        # Training patch features for feature-memory maps (empty until built: maps.feature_memory).
        self.memory = FeatureMemory()

    @contextmanager
    def memory_format(self) -> Iterator[None]:
        """While maps are computed: the model in channels-last format when ``channels_last`` is on (conv
        models only), put back in the format it had afterwards (a training step may own it)."""
        convs = [m.weight for m in self.model.modules() if isinstance(m, nn.Conv2d)]
        if not self.channels_last or not convs or convs[0].is_contiguous(memory_format=torch.channels_last):
            yield
            return
        self.model.to(memory_format=torch.channels_last)
        try:
            yield
        finally:
            self.model.to(memory_format=torch.contiguous_format)

    def _formatted(self, images: Tensor) -> Tensor:
        if self.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    @classmethod
    def from_hparams(cls, model: nn.Module, hparams: Mapping[str, Any]) -> MapEngine:
        """The engine of a run's hyper-parameters (the LightningModule's, as saved in checkpoints)."""
        return cls(
            model,
            int(hparams["model"]["image_size"]),
            int(hparams["model"]["in_channels"]),
            hparams["attention"],
            hparams.get("layer"),
            hparams.get("evaluation"),
            bool(hparams.get("center_input", True)),
            float(hparams.get("threshold_quantile", 0.99)),
        )

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_path: str | Path,
        overrides: Mapping[str, Any] | None = None,
        map_location: str | torch.device = "cpu",
    ) -> MapEngine:
        """The engine of a checkpoint (``model.ckpt``, or Lightning's ``best.ckpt``/``last.ckpt``),
        loaded with ``weights_only=True``: model weights, mean image, thresholds and the selected map,
        in eval mode on ``map_location``. ``overrides`` replace hyper-parameters (``layer``,
        ``attention``, ``evaluation``, ``threshold_quantile``; thresholds must then be re-calibrated)."""
        path = check_checkpoint_path(ckpt_path)
        state, hparams = read_checkpoint(path, overrides)
        engine = cls.from_hparams(model_from_config(hparams["model"]), hparams)
        weights = dict(state.get("state_dict", {}))
        missing = [key for key in TENSOR_KEYS if key not in weights]
        if missing:
            raise ValueError(
                f"{path} has no {', '.join(missing)}; pass a checkpoint written by anomaly_attn.train."
            )
        pad_thresholds(weights, len(engine.map_names))
        engine.model.load_state_dict(
            {key.removeprefix("model."): value for key, value in weights.items() if key.startswith("model.")}
        )
        for key in TENSOR_KEYS:
            getattr(engine, key).copy_(weights[key])
        engine.load_selected_maps(state.get("selected_maps"))
        engine.memory = FeatureMemory.from_state(state.get("feature_memory"))
        engine.model.eval()
        return engine.to(map_location)

    # ----------------------------------------------------------------- state
    @property
    def map_names(self) -> tuple[str, ...]:
        """'selected' (the map selection chose, or the configured one: gradient attention or a control
        map) first, then the controls. metrics.json, thresholds and per_image_scores.csv use these names."""
        return ("selected", *CONTROL_MAPS)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> MapEngine:
        """Move the model and the engine's tensors to ``device``."""
        self.model.to(device)
        self.memory.to(device)
        self.use_tensors(*(getattr(self, key).to(device) for key in TENSOR_KEYS))
        return self

    def use_tensors(self, mean_image: Tensor, pixel_thresholds: Tensor, image_thresholds: Tensor) -> None:
        """Read the mean image and thresholds from these tensors from now on (an owner's buffers)."""
        self.mean_image, self.pixel_thresholds, self.image_thresholds = (
            mean_image, pixel_thresholds, image_thresholds
        )

    def set_mean_image(self, mean_image: Tensor) -> None:
        self.mean_image.copy_(mean_image.to(self.mean_image))

    def set_selected_maps(self, map_spec: MapSpec, score_spec: ScoreSpec) -> None:
        """Use ``map_spec`` as the anomaly map and ``score_spec`` as the image score from now on
        (chosen on validation data; thresholds must be calibrated again)."""
        self.map_spec, self.score_spec = map_spec, score_spec
        self.pixel_thresholds.fill_(float("nan"))
        self.image_thresholds.fill_(float("nan"))

    def _configured_specs(self) -> tuple[MapSpec, ScoreSpec]:
        """The configured map (``attention`` at ``layer``) and the ``evaluation.score`` read from it."""
        map_spec = spec_from_map_config(self.attention_cfg, self.layer)
        score = ScoreSpec(map_spec, str(self.evaluation["score"]), float(self.evaluation["topk_percent"]))
        return map_spec, score

    def use_configured_maps(self) -> None:
        """Go back to the configured map and image score, replacing a selected one (e.g. a checkpoint's);
        thresholds must be calibrated again."""
        self.set_selected_maps(*self._configured_specs())

    def selected_maps_state(self) -> dict[str, Any]:
        """The selected map and image score as plain data (stored in checkpoints)."""
        return {"map": self.map_spec.to_dict(), "score": self.score_spec.to_dict()}

    def memory_state(self) -> dict[str, Any] | None:
        """The feature memory of the layers the selected map and image score use (stored in checkpoints;
        None when they use none)."""
        specs = (self.map_spec, self.score_spec.map)
        return self.memory.state([spec.layer for spec in specs if spec.source == FEATURE_MEMORY])

    def load_selected_maps(self, state: Mapping[str, Any] | None) -> None:
        """Restore ``selected_maps_state()`` (None: a checkpoint without one keeps the configured map)."""
        if state is not None:
            self.map_spec = MapSpec.from_dict(state["map"])
            self.score_spec = ScoreSpec.from_dict(state["score"])

    # ----------------------------------------------------------------- maps
    def network_input(self, images: Tensor) -> Tensor:
        return images - self.mean_image if self.center_input else images

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(network input, reconstruction) of a batch."""
        network_input = self.network_input(images)
        return network_input, self.model(network_input).reconstruction

    @staticmethod
    def attention_input(images: Tensor, reconstruction: Tensor, network_input: Tensor, source: str) -> Tensor:
        """What attention differentiates: the residual ``x − x̂`` or the network's (centred) image input."""
        return images - reconstruction if source == "residual" else network_input

    def layer_maps(
        self,
        images: Tensor,
        layers: Sequence[str],
        variants: Sequence[str],
        source: str = "residual",
        output_size: tuple[int, int] | None = None,
    ) -> dict[tuple[str, str], Tensor]:
        """``{(layer, variant): map}`` of a batch at every layer and variant, from one forward and one
        backward (:func:`anomaly_attn.maps.multilayer.attention_maps_all_layers`); ``source``: the
        attention input, ``residual`` or ``image``."""
        with self.memory_format():
            images = self._formatted(images)
            network_input, reconstruction = self.reconstruct(images)
            attention_input = self.attention_input(images, reconstruction, network_input, source)
            return attention_maps_all_layers(self.model, attention_input, layers, variants, output_size)

    def base_maps(
        self,
        images: Tensor,
        reconstruction: Tensor | None,
        network_input: Tensor,
        layer_keys: Iterable[BaseKey],
        controls: Iterable[str],
        attention_size: tuple[int, int] | None = None,
    ) -> dict[BaseKey, Tensor]:
        """The unsmoothed, unfused maps ``layer_keys`` (``("attention", layer, variant, input)`` and
        ``("feature_memory", layer)``) and ``controls`` of one batch, B×1×H×W each, detached. Attention
        keys that share an input come from one backward pass over all their layers (one per input), the
        feature-memory keys from one forward pass. ``attention_size``: upsample the layer maps to this
        size instead of the input's (selection scores maps at a reduced size). ``reconstruction`` may be
        None where no control and no residual-input attention key is asked for."""
        highpass_sigma = float(self.evaluation["highpass_sigma"])
        maps: dict[BaseKey, Tensor] = {}
        for name in controls:
            options = {"sigma": highpass_sigma} if name.endswith("highpass") else {}
            maps[(name,)] = CONTROL_MAPS[name](images, reconstruction, **options).detach()
        by_input: dict[str, list[tuple[str, str]]] = {}
        memory_layers: list[str] = []
        for key in layer_keys:
            if key[0] == FEATURE_MEMORY:
                memory_layers.append(key[1])
            else:
                _, layer, variant, source = key
                by_input.setdefault(source, []).append((layer, variant))
        output_size = attention_size or tuple(images.shape[-2:])
        for source, pairs in by_input.items():
            attention_input = self.attention_input(images, reconstruction, network_input, source)
            with self.memory_format():
                computed = self.attention_maps(self._formatted(attention_input), pairs, output_size)
            for (layer, variant), layer_map in computed.items():
                maps[("attention", layer, variant, source)] = layer_map
        if memory_layers:
            with self.memory_format():
                memory_input = self._formatted(network_input)
                computed = self.memory.maps(self.model, memory_input, memory_layers, output_size)
            maps.update({(FEATURE_MEMORY, layer): layer_map for layer, layer_map in computed.items()})
        return maps

    def attention_maps(
        self, attention_input: Tensor, pairs: Sequence[tuple[str, str]], output_size: tuple[int, int]
    ) -> dict[tuple[str, str], Tensor]:
        """``{(layer, variant): map}`` (detached) of ``pairs`` from one backward pass over all their layers;
        each variant is combined only at its own layers (``expvae``: one backward per latent dimension)."""
        maps: dict[tuple[str, str], Tensor] = {}
        single = [(layer, variant) for layer, variant in pairs if variant != "expvae"]
        if single:
            gradients = layer_gradients(self.model, attention_input, sorted({layer for layer, _ in single}))
            with torch.no_grad():
                for variant in sorted({variant for _, variant in single}):
                    layers = [layer for layer, v in single if v == variant]
                    computed = maps_from_gradients({k: gradients[k] for k in layers}, [variant], output_size)
                    maps.update({(layer, variant): computed[(layer, variant)] for layer in layers})
        for layer, variant in pairs:
            if variant == "expvae":
                maps[(layer, variant)] = attention_map(
                    self.model, attention_input, layer, variant, output_size=output_size,
                    latent_dims=self.attention_cfg.get("latent_dims"),
                ).detach()
        return maps

    def compute_maps(self, images: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """All anomaly maps (B×1×H×W) for a batch, and the reconstruction.

        The selected (or configured) map is under 'selected', the controls under their names, and the
        map the image score is read from under 'image_score_map' when it is another map.
        Always float32, also inside a bf16 autocast region (a bf16-mixed trainer's test step).
        """
        specs = [self.map_spec, *(MapSpec(source=name) for name in CONTROL_MAPS)]
        if self.score_spec.map != self.map_spec:
            specs.append(self.score_spec.map)
        rendered, reconstruction = self.render_specs(images, specs)
        assert reconstruction is not None  # the controls read it
        maps = {"selected": rendered[0], **dict(zip(CONTROL_MAPS, rendered[1:], strict=False))}
        if len(rendered) > len(CONTROL_MAPS) + 1:
            maps["image_score_map"] = rendered[-1]
        return maps, reconstruction

    def render_specs(self, images: Tensor, specs: Sequence[MapSpec]) -> tuple[list[Tensor], Tensor | None]:
        """The maps of ``specs`` (B×1×H×W at the input's size, float32, in order) for a batch, from one
        reconstruction, one backward pass per attention input and one forward pass for feature-memory maps,
        and the reconstruction. Where no spec reads it (feature-memory maps and attention on the image
        input, unfused) the reconstruction is not computed and None is returned: the faithfulness checks
        of a feature-memory image score re-score over a thousand edited images, and a full forward pass
        each would cost more than the encoder layers the memory reads."""
        with torch.autocast(images.device.type, enabled=False), self.memory_format():
            images = self._formatted(images.float())
            controls = {spec.source for spec in specs if spec.is_control}
            if any(spec.fusion != "none" for spec in specs):
                controls.add("residual_l2")
            layer_keys = {spec.base_key for spec in specs if not spec.is_control}
            if controls or any(key[0] == "attention" and key[3] == "residual" for key in layer_keys):
                network_input, reconstruction = self.reconstruct(images)
            else:
                network_input, reconstruction = self.network_input(images), None
            bases = self.base_maps(images, reconstruction, network_input, layer_keys, controls)
            return [render(spec, bases) for spec in specs], reconstruction

    def map_scores(self, maps: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Image scores (B) of every map in ``map_names``: the selected image score for 'selected',
        ``evaluation.score`` for the controls."""
        reduction, topk_percent = self.evaluation["score"], float(self.evaluation["topk_percent"])
        scores = {name: image_scores(maps[name], reduction, topk_percent) for name in CONTROL_MAPS}
        scores["selected"] = self.score_spec.scores(maps.get("image_score_map", maps["selected"]))
        return scores

    # ----------------------------------------------------------------- calibration (validation only)
    def calibrate(self, batches: Iterable[Mapping[str, Tensor]]) -> dict[str, dict[str, float]]:
        """Choose pixel and image thresholds per map kind on held-out NORMAL validation images
        (``batches``: a validation dataloader).

        Threshold = the ``threshold_quantile`` quantile of the validation values: with normal data
        only, this bounds the false-positive rate on normal images at about 1 - quantile.
        """
        was_training = self.model.training
        self.model.eval()
        pixel_values: dict[str, list[np.ndarray]] = {name: [] for name in self.map_names}
        score_values: dict[str, list[np.ndarray]] = {name: [] for name in self.map_names}
        total = len(batches) if isinstance(batches, Sized) else 0  # no bar for a plain iterator
        with progress("calibration: thresholds on validation images", total) as advance:
            for batch in batches:
                maps, _ = self.compute_maps(batch["image"].to(self.device))
                scores = self.map_scores(maps)
                for name in self.map_names:
                    pixel_values[name].append(maps[name].flatten().cpu().numpy())
                    score_values[name].append(scores[name].cpu().numpy())
                advance(1)
        self.model.train(was_training)
        if not any(len(v) for v in pixel_values.values()):
            raise RuntimeError("Calibration needs a non-empty validation split (dataset.val_fraction > 0).")
        q = self.threshold_quantile
        for i, name in enumerate(self.map_names):
            self.pixel_thresholds[i] = float(np.quantile(np.concatenate(pixel_values[name]), q))
            self.image_thresholds[i] = float(np.quantile(np.concatenate(score_values[name]), q))
        return {
            name: {"pixel": float(self.pixel_thresholds[i]), "image": float(self.image_thresholds[i])}
            for i, name in enumerate(self.map_names)
        }
