"""How one anomaly map and one image score are made: :class:`MapSpec`, :class:`ScoreSpec`, and
:func:`render`, which makes a spec's map from its base maps (the unsmoothed, unfused maps that
:class:`anomaly_attn.maps.engine.MapEngine` computes).

A :class:`MapSpec` is gradient attention at a layer (variant, input), or a non-gradient control map (the
residual ``|x − x̂|²``, ``1 − SSIM``, a high-pass of the residual), optionally smoothed and, for attention,
fused with the residual. A :class:`ScoreSpec` says how an image score is read from a map (max or top-k
mean). Specs are plain data: checkpoints store the selected ones (``to_dict``/``from_dict``).

Fusion never normalises per image: ``product`` is attention × residual (invariant to rescaling either);
``zsum`` adds the two maps standardised with the mean and standard deviation of their values on the
validation NORMAL images only (``zsum_stats``, set by map selection), which travel with the spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor

from anomaly_attn.common.registries import unknown_name
from anomaly_attn.maps.controls import CONTROL_MAPS
from anomaly_attn.maps.gradient import ATTENTION_INPUTS, list_variants
from anomaly_attn.maps.postprocess import IMAGE_SCORE_REDUCTIONS, gaussian_smooth, image_scores
from anomaly_attn.run.record import RENAMED_VARIANTS

FUSIONS = ("none", "product", "zsum")
FEATURE_MEMORY = "feature_memory"
# Map sources computed at an encoder layer (the rest are control maps of the image and reconstruction).
LAYER_SOURCES = ("attention", FEATURE_MEMORY)
_ZSUM_EPS = 1e-12


@dataclass(frozen=True)
class MapSpec:
    """How one anomaly map is made (see the module docstring).

    ``source``: ``attention``, ``feature_memory`` (distance to training patches in the encoder's features,
    :mod:`anomaly_attn.maps.feature_memory`) or a control-map name; ``layer``: attention and feature
    memory; ``variant``/``input``: attention only; ``fusion``: ``none``, ``product`` or ``zsum`` with
    ``residual_l2`` (attention and feature memory);
    ``smoothing_sigma``: Gaussian blur in pixels of the input image, applied before fusion;
    ``zsum_stats``: (mean, std) of the smoothed attention and (mean, std) of ``residual_l2`` on
    validation normal pixels, set by :func:`select_maps` for ``zsum``.
    """

    source: str = "attention"
    layer: str | None = None
    variant: str | None = None
    input: str | None = None
    fusion: str = "none"
    smoothing_sigma: float = 0.0
    zsum_stats: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.variant in RENAMED_VARIANTS:  # a map stored before 0.2 (checkpoints keep specs)
            object.__setattr__(self, "variant", RENAMED_VARIANTS[self.variant])
        if self.fusion not in FUSIONS:
            raise ValueError(unknown_name("map.fusion", self.fusion, FUSIONS))
        if self.source == "attention":
            if self.variant not in list_variants():
                message = unknown_name("map.variant", self.variant, [*list_variants(), *CONTROL_MAPS])
                raise ValueError(f"{message} (gradient attention: {', '.join(list_variants())}; the rest are "
                                 "control maps)")
            if self.input not in ATTENTION_INPUTS:
                raise ValueError(unknown_name("map.input", self.input, ATTENTION_INPUTS))
        elif self.source == FEATURE_MEMORY:
            if not self.layer or self.variant is not None or self.input is not None:
                raise ValueError("a feature_memory map needs a layer and takes no variant or input")
        elif self.source not in CONTROL_MAPS:
            raise ValueError(
                f"Unknown map {self.source!r}; valid: 'attention', '{FEATURE_MEMORY}' or a control map "
                f"{sorted(CONTROL_MAPS)}"
            )
        elif self.fusion != "none":
            raise ValueError(f"{self.source} is already a residual map: only attention maps are fused")
        if self.smoothing_sigma < 0:
            raise ValueError(f"smoothing_sigma must be >= 0 (0: none), got {self.smoothing_sigma}")

    @property
    def base_key(self) -> tuple[str, ...]:
        """Which unsmoothed, unfused map this spec starts from."""
        if self.source == "attention":
            return ("attention", str(self.layer), str(self.variant), str(self.input))
        if self.source == FEATURE_MEMORY:
            return (FEATURE_MEMORY, str(self.layer))
        return (self.source,)

    @property
    def is_control(self) -> bool:
        """A control map (of the image and reconstruction only), not a map made at an encoder layer."""
        return self.source not in LAYER_SOURCES

    @property
    def family(self) -> str:
        """``attention``, ``attention+residual`` (fused), ``feature_memory``, ``feature_memory+residual`` or
        the control's name: one row of the study."""
        if self.is_control:
            return self.source
        return self.source if self.fusion == "none" else f"{self.source}+residual"

    @property
    def label(self) -> str:
        """A short readable name, e.g. ``mean_abs_cam@encoder.16[residual]×residual_l2 σ2``."""
        text = self.source
        if self.source == "attention":
            text = f"{self.variant}@{self.layer}[{self.input}]"
        elif self.source == FEATURE_MEMORY:
            text = f"{FEATURE_MEMORY}@{self.layer}"
        if not self.is_control:
            text += {"none": "", "product": "×residual_l2", "zsum": "+z(residual_l2)"}[self.fusion]
        if self.smoothing_sigma:
            text += f" σ{self.smoothing_sigma:g}"
        return text

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["zsum_stats"] = list(self.zsum_stats) if self.zsum_stats is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MapSpec:
        values = dict(data)
        stats = values.get("zsum_stats")
        values["zsum_stats"] = tuple(float(v) for v in stats) if stats is not None else None
        values["smoothing_sigma"] = float(values.get("smoothing_sigma", 0.0))
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ScoreSpec:
    """An image score: ``reduction`` (max / topk_mean of the top ``topk_percent`` %) of ``map``."""

    map: MapSpec
    reduction: str = "max"
    topk_percent: float = 1.0

    def __post_init__(self) -> None:
        if self.reduction not in IMAGE_SCORE_REDUCTIONS:
            raise ValueError(f"Unknown image score {self.reduction!r}; valid: {list(IMAGE_SCORE_REDUCTIONS)}")

    @property
    def label(self) -> str:
        how = "max" if self.reduction == "max" else f"top{self.topk_percent:g}%"
        return f"{how} of {self.map.label}"

    def to_dict(self) -> dict[str, Any]:
        return {"map": self.map.to_dict(), "reduction": self.reduction, "topk_percent": self.topk_percent}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreSpec:
        return cls(
            MapSpec.from_dict(data["map"]), str(data["reduction"]), float(data.get("topk_percent", 1.0))
        )

    def scores(self, maps: Tensor) -> Tensor:
        return image_scores(maps, self.reduction, self.topk_percent)


def spec_from_map_config(attention: Mapping[str, Any], layer: str) -> MapSpec:
    """The map ``conf/map/*.yaml`` (+ ``layer``) configures, as a spec (``selection.map=fixed``)."""
    variant = str(attention["variant"])
    sigma = float(attention.get("smoothing_sigma", 0.0))
    if variant in CONTROL_MAPS:
        if attention.get("fusion", "none") != "none":
            raise ValueError(
                f"map.fusion={attention['fusion']} fuses a gradient map with the residual; "
                f"map={variant} is already a residual map. Use map.fusion=none."
            )
        return MapSpec(source=variant, smoothing_sigma=sigma)
    return MapSpec(
        source="attention",
        layer=layer,
        variant=variant,
        input=str(attention.get("input", "residual")),
        fusion=str(attention.get("fusion", "none")),
        smoothing_sigma=sigma,
    )


def render(spec: MapSpec, bases: Mapping[tuple[str, ...], Tensor], sigma_scale: float = 1.0) -> Tensor:
    """The map of ``spec`` from its base map(s). ``sigma_scale`` converts the spec's σ (pixels of the
    input image) to the resolution of ``bases`` (selection may score downsampled maps)."""
    result = gaussian_smooth(bases[spec.base_key], spec.smoothing_sigma * sigma_scale)
    if spec.fusion == "product":
        result = result * bases[("residual_l2",)]
    elif spec.fusion == "zsum":
        if spec.zsum_stats is None:
            raise ValueError(f"{spec.label}: zsum fusion needs the validation statistics (zsum_stats)")
        att_mean, att_std, res_mean, res_std = spec.zsum_stats
        residual = bases[("residual_l2",)]
        result = (result - att_mean) / (att_std + _ZSUM_EPS) + (residual - res_mean) / (res_std + _ZSUM_EPS)
    return result

