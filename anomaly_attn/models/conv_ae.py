"""``conv_ae``: the research code's MVTec convolutional autoencoder (docs/METHOD.md, "Backbones").

The encoder is one ``nn.Sequential`` whose indices 0–27 match the research code's table exactly, because
sweeps address layers by these names (``encoder.14``, ``encoder.21``). The latent ``s`` is the
flattened encoder output (``32·(S/32)²``, 2048 at 256²); a Linear bottleneck feeds the decoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_attn.models.base import (
    ReconstructionModel,
    ReconstructionOutput,
    check_image_size,
    check_in_channels,
    upsample_block,
)
from anomaly_attn.models.registry import register_model

# (in_channels, out_channels, kernel, stride) of the research code's encoder's nine convolutions; the first
# one's in_channels is the image's channel count.
_ENCODER_CONVS = (
    (None, 32, 4, 2),
    (32, 32, 4, 2),
    (32, 32, 4, 2),
    (32, 32, 3, 1),
    (32, 64, 4, 2),
    (64, 64, 3, 1),
    (64, 128, 4, 2),
    (128, 64, 3, 1),
    (64, 32, 3, 1),
)
_TOTAL_STRIDE = 32
_ENCODER_OUT_CHANNELS = 32


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding: output size ``ceil(i / s)``.

    Total pad per dimension ``max((ceil(i/s) − 1)·s + k − i, 0)``, the smaller half before. The
    padding lives inside this module so the encoder's Sequential indices match the research code's table.
    ``pad_mode`` is ``F.pad``'s mode: ``"constant"`` (zeros, the research code's) unless a measurement such as
    ``anomaly_attn.maps.health.circular_padding`` switches it to ``"circular"`` for a while.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        self.pad_mode = "constant"

    def forward_padding(self, x: torch.Tensor) -> list[int]:
        """``F.pad``'s pad list for ``x``: (left, right, top, bottom), the last dimension first."""
        pads: list[int] = []
        for size, kernel, stride in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, self.forward_padding(x), mode=self.pad_mode)
        return self._conv_forward(padded, self.weight, self.bias)


def _upsample_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """×2 nearest upsampling, 3×3 conv, BatchNorm, LeakyReLU."""
    return upsample_block(in_channels, out_channels, nn.LeakyReLU(0.2))


@register_model("conv_ae")
class ConvAutoencoder(ReconstructionModel):
    """The research code's MVTec autoencoder; ``image_size`` must be a multiple of 32.

    Encoder: nine "same" convolutions (five of stride 2) with InstanceNorm(affine) and ReLU, then
    Flatten (``encoder.0`` … ``encoder.27``). Bottleneck: Linear(latent → ``bottleneck_dim``).
    Decoder: Linear back to ``32×(S/32)²``, a 3×3 conv, five (×2 upsample, 3×3 conv, BatchNorm,
    LeakyReLU) blocks with channels 64, 64, 32, 32, 16, and a 3×3 conv to the image channels with a
    sigmoid — lighter than the research code's decoder at full resolution, to stay fast on CPU.
    """

    # The research code's default was encoder.15, a convolution that feeds an InstanceNorm: the norm
    # cancels any per-channel shift, so the Grad-CAM channel weights alpha there are exactly zero and the
    # mean_abs_cam/gradcam maps are float noise. encoder.17 (the block's ReLU, feeding the next conv ->
    # InstanceNorm) has alpha only through zero padding at the border, measured
    # (`python -m anomaly_attn.layers`, docs/MAPS.md).
    # encoder.16, the block's InstanceNorm output (64 x S/16 x S/16), keeps a genuine alpha. The default
    # layer serves the training-time attention loss and selection.map=fixed; selection chooses otherwise.
    default_layer = "encoder.16"
    total_stride = _TOTAL_STRIDE

    def __init__(self, image_size: int = 256, in_channels: int = 3, bottleneck_dim: int = 64) -> None:
        super().__init__()
        check_image_size(self.registry_name, image_size, _TOTAL_STRIDE, minimum=2 * _TOTAL_STRIDE)
        check_in_channels(self.registry_name, in_channels)
        encoder_layers: list[nn.Module] = []
        for conv_in, conv_out, kernel, stride in _ENCODER_CONVS:
            encoder_layers += [
                SameConv2d(conv_in or in_channels, conv_out, kernel, stride),
                nn.InstanceNorm2d(conv_out, affine=True),
                nn.ReLU(),
            ]
        encoder_layers.append(nn.Flatten())
        self.encoder = nn.Sequential(*encoder_layers)

        grid_size = image_size // _TOTAL_STRIDE
        self.latent_dim = _ENCODER_OUT_CHANNELS * grid_size**2
        self.bottleneck = nn.Linear(self.latent_dim, bottleneck_dim)
        self.decoder = nn.Sequential(
            nn.Linear(bottleneck_dim, self.latent_dim),
            nn.ReLU(),
            nn.Unflatten(1, (_ENCODER_OUT_CHANNELS, grid_size, grid_size)),
            nn.Conv2d(_ENCODER_OUT_CHANNELS, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.LeakyReLU(0.2),
            _upsample_block(64, 64),
            _upsample_block(64, 32),
            _upsample_block(32, 32),
            _upsample_block(32, 16),
            _upsample_block(16, 16),
            nn.Conv2d(16, in_channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> ReconstructionOutput:
        latent = self.encoder(x)
        reconstruction = self.decoder(self.bottleneck(latent))
        return ReconstructionOutput(reconstruction, latent, self._zero_kl(latent))
