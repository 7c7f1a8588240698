"""``unet``: the research code's U-Net autoencoder (docs/METHOD.md, "Backbones").

Five down blocks (``encoder.0`` … ``encoder.4``; 64, 128, 256, 512, 512 channels times ``width``;
each conv+BN+ReLU twice, the first conv of blocks 1–4 with stride 2), four up blocks (transposed
convolution ×2, concatenation with the skip of the same resolution, conv+BN+ReLU twice), a 1×1 conv
to the image channels and a sigmoid. The latent ``s`` is the flattened bottleneck (``encoder.4``).
The skips let the decoder see fine detail directly, as in the research code.
"""

from __future__ import annotations

import torch
from torch import nn

from anomaly_attn.models.base import (
    ReconstructionModel,
    ReconstructionOutput,
    check_image_size,
    check_in_channels,
)
from anomaly_attn.models.registry import register_model

_BASE_CHANNELS = (64, 128, 256, 512, 512)
_TOTAL_STRIDE = 16


def _double_conv(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """(3×3 conv, BatchNorm, ReLU) twice; the first conv has ``stride``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class _UpBlock(nn.Module):
    """Transposed convolution ×2, concatenation with the skip, double conv."""

    def __init__(self, in_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, skip_channels, 2, stride=2)
        self.fuse = _double_conv(2 * skip_channels, skip_channels, stride=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.upsample(x), skip], dim=1))


@register_model("unet")
class UNetAutoencoder(ReconstructionModel):
    """The research code's U-Net; ``image_size`` must be a multiple of 16.

    ``width`` scales every channel count (at least 1 channel each), e.g. 0.125 for fast CPU tests.
    Layer names are the down blocks ``encoder.0`` … ``encoder.4`` (the bottleneck is ``encoder.4``).
    """

    default_layer = "encoder.3"
    total_stride = _TOTAL_STRIDE

    def __init__(self, image_size: int = 256, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        check_image_size(self.registry_name, image_size, _TOTAL_STRIDE)
        check_in_channels(self.registry_name, in_channels)
        if width <= 0:
            raise ValueError(
                f"{self.registry_name}: width={width} must be positive (1.0 is the research code's)"
            )
        channels = [max(1, round(base * width)) for base in _BASE_CHANNELS]
        self.encoder = nn.ModuleList(
            _double_conv(block_in, block_out, stride=1 if index == 0 else 2)
            for index, (block_in, block_out) in enumerate(
                zip([in_channels, *channels[:-1]], channels, strict=True)
            )
        )
        # Decoder blocks run from the bottleneck up: decoder.0 joins encoder.4 with the skip of encoder.3.
        self.decoder = nn.ModuleList(
            _UpBlock(channels[index + 1], channels[index]) for index in reversed(range(len(channels) - 1))
        )
        self.head = nn.Sequential(nn.Conv2d(channels[0], in_channels, 1), nn.Sigmoid())

    def _encoder_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for block in self.encoder:
            x = block(x)
            features.append(x)
        return features

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._encoder_features(x)[-1].flatten(1)

    def forward(self, x: torch.Tensor) -> ReconstructionOutput:
        *skips, bottleneck = self._encoder_features(x)
        decoded = bottleneck
        for up_block, skip in zip(self.decoder, reversed(skips), strict=True):
            decoded = up_block(decoded, skip)
        latent = bottleneck.flatten(1)
        return ReconstructionOutput(self.head(decoded), latent, self._zero_kl(latent))
