"""Anomaly maps: differentiable gradient attention on the latent code, and non-gradient control maps."""

from anomaly_attn.maps.controls import (
    CONTROL_MAPS,
    control_map,
    image_highpass,
    register_control,
    residual_highpass,
    residual_l2,
    residual_ssim,
)
from anomaly_attn.maps.gradient import (
    alpha_variants,
    attention_map,
    list_variants,
    register_variant,
    resolve_layer,
)
from anomaly_attn.maps.health import (
    ALPHA_DEGENERATE_RATIO,
    AlphaHealth,
    alpha_health,
    circular_padding,
    variants_valid_at,
)
from anomaly_attn.maps.multilayer import (
    LayerGradient,
    attention_maps_all_layers,
    layer_gradients,
    maps_from_gradients,
)
from anomaly_attn.maps.postprocess import gaussian_smooth, image_scores

__all__ = [
    "ALPHA_DEGENERATE_RATIO",
    "CONTROL_MAPS",
    "AlphaHealth",
    "LayerGradient",
    "alpha_health",
    "alpha_variants",
    "attention_map",
    "attention_maps_all_layers",
    "control_map",
    "circular_padding",
    "gaussian_smooth",
    "image_highpass",
    "image_scores",
    "layer_gradients",
    "list_variants",
    "maps_from_gradients",
    "register_control",
    "register_variant",
    "residual_highpass",
    "residual_l2",
    "residual_ssim",
    "resolve_layer",
    "variants_valid_at",
]
