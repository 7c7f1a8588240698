"""``timm_ae``: an autoencoder around any timm feature extractor (``features_only=True``).

The encoder is ``timm.create_model(encoder, features_only=True, pretrained=..., in_chans=...)``; its
feature stages are the addressable layers, named as ``named_modules()`` names them under the prefix
``encoder.`` (resnet18: ``encoder.act1``, ``encoder.layer1`` … ``encoder.layer4``). The latent ``s``
is the flattened deepest feature map (no pooling, so attention keeps the spatial code). The decoder
upsamples that map back to the input: one (×2 nearest upsample, 3×3 conv, BatchNorm, ReLU) block per
halving of the encoder's resolution, channels halving down to 16, then a 3×3 conv and a sigmoid.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from anomaly_attn.models.base import (
    ReconstructionModel,
    ReconstructionOutput,
    check_image_size,
    check_in_channels,
    upsample_block,
)
from anomaly_attn.models.registry import register_model

_MIN_DECODER_CHANNELS = 16


def _upsample_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return upsample_block(in_channels, out_channels)


@register_model("timm_ae")
class TimmAutoencoder(ReconstructionModel):
    """timm encoder + upsampling decoder; ``image_size`` must be a multiple of the encoder's total
    stride (32 for resnet18). ``default_layer`` is the second-deepest feature stage (``encoder.layer3``
    for resnet18, stride 16 like conv_ae's ``encoder.15``).

    ``pretrained=True`` loads timm's weights from the Hugging Face / timm cache or the network; when
    neither has them, a RuntimeError says how to proceed.
    """

    def __init__(
        self,
        image_size: int = 256,
        in_channels: int = 3,
        encoder: str = "resnet18",
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        # timm takes seconds to import; importing it here keeps `import anomaly_attn.models` fast.
        import timm

        check_in_channels(self.registry_name, in_channels)
        if not isinstance(pretrained, bool):
            # A string such as "False" would be truthy: refuse it instead of downloading weights.
            raise TypeError(
                f"{self.registry_name}: pretrained must be a bool, got {pretrained!r} "
                f"({type(pretrained).__name__}); write model.pretrained=false or true"
            )
        if not timm.is_model(encoder):
            raise ValueError(
                f"{self.registry_name}: {encoder!r} is not a timm model; "
                f"see timm.list_models() for valid names (e.g. resnet18)"
            )
        try:
            self.encoder = timm.create_model(
                encoder, features_only=True, pretrained=pretrained, in_chans=in_channels
            )
        except OSError as error:
            raise RuntimeError(
                f"{self.registry_name}: pretrained weights for timm encoder {encoder!r} are unavailable "
                f"offline ({error}); set model.pretrained=false, or place the weights in the Hugging "
                f"Face / timm cache (HF_HOME, TORCH_HOME) first"
            ) from error

        reduction = self.encoder.feature_info.reduction()[-1]
        upsample_steps = round(math.log2(reduction))
        if 2**upsample_steps != reduction:
            raise ValueError(
                f"{self.registry_name}: encoder {encoder!r} has total stride {reduction}, not a power "
                f"of 2, which the ×2 upsampling decoder cannot invert; choose another encoder"
            )
        self.total_stride = reduction
        check_image_size(self.registry_name, image_size, reduction)
        self._feature_layer_names = self._resolve_feature_layer_names()
        self.default_layer = self._feature_layer_names[-2 if len(self._feature_layer_names) > 1 else -1]

        decoder_channels = self.encoder.feature_info.channels()[-1]
        decoder_blocks: list[nn.Module] = []
        for _ in range(upsample_steps):
            block_out = max(decoder_channels // 2, _MIN_DECODER_CHANNELS)
            decoder_blocks.append(_upsample_block(decoder_channels, block_out))
            decoder_channels = block_out
        self.decoder = nn.Sequential(
            *decoder_blocks, nn.Conv2d(decoder_channels, in_channels, 3, padding=1), nn.Sigmoid()
        )

    def _resolve_feature_layer_names(self) -> list[str]:
        """timm's feature module names as they appear in ``named_modules()`` under ``encoder.``.

        timm flattens nested names in some wrappers (``stages.0`` → ``stages_0``) and nests them in
        others (``model.blocks.9``); try each spelling.
        """
        module_names = {name for name, _ in self.encoder.named_modules()}
        layer_names = []
        for feature_name in self.encoder.feature_info.module_name():
            spellings = (feature_name, feature_name.replace(".", "_"), f"model.{feature_name}")
            found = next((spelling for spelling in spellings if spelling in module_names), None)
            if found is None:
                raise RuntimeError(
                    f"{self.registry_name}: cannot find timm feature module {feature_name!r} in "
                    f"{type(self.encoder).__name__}; tried {', '.join(spellings)}"
                )
            layer_names.append(f"encoder.{found}")
        return layer_names

    def layer_names(self) -> list[str]:
        return list(self._feature_layer_names)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[-1].flatten(1)

    def forward(self, x: torch.Tensor) -> ReconstructionOutput:
        deepest_features = self.encoder(x)[-1]
        latent = deepest_features.flatten(1)
        return ReconstructionOutput(self.decoder(deepest_features), latent, self._zero_kl(latent))
