"""A gradient-attention variant: |activation x gradient| summed over channels."""

from torch import Tensor

from anomaly_attn.maps.gradient import register_variant


@register_variant("dummy_act_grad")
def activation_times_gradient(activation: Tensor, gradient: Tensor) -> Tensor:
    return (activation * gradient).abs().sum(dim=1, keepdim=True)
