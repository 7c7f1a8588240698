"""A control map: the absolute residual (an L1 twin of residual_l2)."""

from torch import Tensor

from anomaly_attn.maps.controls import register_control


@register_control("dummy_abs_residual")
def abs_residual(x: Tensor, reconstruction: Tensor) -> Tensor:
    return (x - reconstruction).abs().mean(dim=1, keepdim=True)
