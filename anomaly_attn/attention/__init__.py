"""Anomaly maps: differentiable gradient attention on the latent code, and non-gradient baselines."""

from anomaly_attn.attention.baselines import (
    BASELINE_MAPS,
    baseline_map,
    image_highpass,
    residual_highpass,
    residual_l2,
    residual_ssim,
)
from anomaly_attn.attention.gradient import (
    AttentionConfig,
    anomaly_map,
    attention_map,
    list_variants,
    register_variant,
    resolve_layer,
)
from anomaly_attn.attention.postprocess import gaussian_smooth, image_scores

__all__ = [
    "BASELINE_MAPS",
    "AttentionConfig",
    "anomaly_map",
    "attention_map",
    "baseline_map",
    "gaussian_smooth",
    "image_highpass",
    "image_scores",
    "list_variants",
    "register_variant",
    "residual_highpass",
    "residual_l2",
    "residual_ssim",
    "resolve_layer",
]
