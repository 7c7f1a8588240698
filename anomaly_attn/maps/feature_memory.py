"""Feature-memory maps: how far each patch of an image is, in the model's own encoder features, from its
nearest neighbour in a memory of training patches.

After training, :meth:`FeatureMemory.build` runs the training images (never validation or test images)
through the model, takes the output of each memory layer (optionally averaged over a ``pool``×``pool``
neighbourhood, so a patch describes its surroundings), and keeps a seeded random subset of at most
``patches`` patch vectors per layer. :meth:`FeatureMemory.maps` gives, for a batch, each patch's
Euclidean distance to its nearest memory patch, upsampled (bilinear) to the image size: a map that is
high where the image has features the training images never had. No pretrained weights are needed;
with a timm encoder and its weights the same works on pretrained features.

The maps are candidates of map selection like every other map (``MapSpec(source="feature_memory",
layer=...)``): scored on the synthetic validation set, smoothed and fused with the residual. The
checkpoint keeps the memory of the layers the selected map and image score use (``state``).

Cost (bounded): a layer with ``h×w`` patches per image keeps ``min(patches, max_distances // (h·w))``
memory patches, so one image costs at most ``max_distances`` patch-to-memory distances at any layer
(a 32×32 layer keeps 4096 of the default 16384; 16×16 and coarser keep all 16384). Memory
``≤ patches × channels × 4`` bytes per layer; time one forward pass per batch plus at most
``max_distances × channels`` multiply-adds per image and layer, computed in chunks of at most
``CHUNK_ELEMENTS`` distances (``BENCHMARKS.md`` has measured numbers).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_attn.models import resolve_layer

# The default bound on the patch-to-memory distances of one image at one layer (``max_distances``).
MAX_DISTANCES = 1 << 22
# At most this many query-to-memory distances are held at once (float32: 16 MiB). Measured on 2 CPU
# cores (16384 queries, 16384 memory patches of 32 channels): 2^22 in one reused buffer takes 112 ms,
# 2^24 in a fresh tensor per chunk 260 ms (each chunk's 64 MiB was a new allocation, page faults
# included); the distances are bit-identical.
CHUNK_ELEMENTS = 1 << 22


def memory_size(patches: int, max_distances: int | None, patches_per_image: int) -> int:
    """How many memory patches a layer with ``patches_per_image`` (h·w) patches keeps at most: ``patches``,
    or ``max_distances // (h·w)`` where that is fewer (None: no bound), so one image costs at most
    ``max_distances`` distances there."""
    if max_distances is None:
        return patches
    return min(patches, max(1, max_distances // patches_per_image))


class _AllCaptured(Exception):
    """Raised by the last hook: every wanted layer's output is in, the rest of the forward is not needed."""


def layer_features(
    model: nn.Module, network_input: Tensor, layers: Sequence[str], pool: int
) -> dict[str, Tensor]:
    """The outputs (B×C×h×w, float32, detached) of ``layers`` for one forward pass of ``network_input``,
    each averaged over ``pool``×``pool`` neighbourhoods (1: as they are). Flat layers are refused. The
    forward stops as soon as every layer's output is captured (an encoder layer's features do not need
    the decoder: about half the cost of a full pass)."""
    outputs: dict[str, Tensor] = {}
    handles = []
    wanted = set(layers)
    for name in wanted:
        def keep(_module: nn.Module, _inputs: object, output: Tensor, name: str = name) -> None:
            outputs[name] = output.detach()
            if len(outputs) == len(wanted):
                raise _AllCaptured

        handles.append(resolve_layer(model, name).register_forward_hook(keep))
    try:
        with torch.no_grad():
            model(network_input)
    except _AllCaptured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    features = {}
    for name in layers:
        value = outputs[name].float()
        if value.dim() != 4:
            raise ValueError(
                f"feature memory at {name}: the layer's output {tuple(value.shape[1:])} has no spatial "
                "extent; choose a spatial layer (`python -m anomaly_attn.layers` lists them)."
            )
        if pool > 1:
            value = F.avg_pool2d(value, pool, stride=1, padding=pool // 2, count_include_pad=False)
        features[name] = value.contiguous()
    return features


def nearest_distances(queries: Tensor, bank: Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """For each row of ``queries`` (M×C), its Euclidean distance to the nearest row of ``bank`` (N×C),
    computed in chunks of at most ``chunk_elements`` distances, as ``|q|² + min(|b|² − 2 q·b)`` (one
    matrix product per chunk, written into one buffer reused by every chunk: 1.5× faster than
    ``torch.cdist`` on the CPU even before the buffer was reused, measured)."""
    if len(queries) == 0:
        return queries.new_zeros(0)
    rows = min(len(queries), max(1, chunk_elements // max(1, len(bank))))
    bank_norms = bank.pow(2).sum(dim=1)
    bank_t = bank.t()
    buffer = queries.new_empty(rows, len(bank))
    nearest = queries.new_empty(len(queries))
    for start in range(0, len(queries), rows):
        chunk = queries[start : start + rows]
        products = buffer[: len(chunk)]
        torch.addmm(bank_norms, chunk, bank_t, alpha=-2, out=products)
        torch.amin(products, dim=1, out=nearest[start : start + len(chunk)])
    return nearest.add_(queries.pow(2).sum(dim=1)).clamp_min_(0).sqrt_()


class FeatureMemory:
    """Per layer, a bank (N×C float32) of training patch features, and the ``pool`` they were made with."""

    def __init__(self, banks: Mapping[str, Tensor] | None = None, pool: int = 3) -> None:
        if pool < 1 or pool % 2 == 0:
            raise ValueError(f"feature memory pool must be an odd number >= 1, got {pool}")
        self.banks: dict[str, Tensor] = dict(banks or {})
        self.pool = int(pool)

    def __contains__(self, layer: object) -> bool:
        return layer in self.banks

    @classmethod
    def build(
        cls,
        model: nn.Module,
        batches: Iterable[Tensor],
        num_images: int,
        layers: Sequence[str],
        patches: int,
        pool: int = 3,
        seed: int = 0,
        max_distances: int | None = MAX_DISTANCES,
    ) -> FeatureMemory:
        """The memory of ``layers`` from ``batches`` of network inputs (``num_images`` in all: the training
        images, centred as the model sees them). Each image gives the same number of random patches, and
        the pooled draw is cut to ``patches`` per layer, or to ``max_distances // (h·w)`` at a layer of
        ``h×w`` patches where that is fewer (the bound on one image's distances; None: no bound). A seeded
        generator: the same images and seed give the same memory."""
        if patches < 1 or (max_distances is not None and max_distances < 1):
            raise ValueError(f"feature memory patches and max_distances must be >= 1, got {patches} and "
                             f"{max_distances}")
        generator = torch.Generator().manual_seed(int(seed))
        per_image = max(1, math.ceil(patches / max(1, num_images)))
        parts: dict[str, list[Tensor]] = {layer: [] for layer in layers}
        sizes = dict.fromkeys(layers, patches)
        was_training = model.training
        model.eval()
        try:
            for batch in batches:
                for layer, value in layer_features(model, batch, layers, pool).items():
                    count, channels = value.shape[0], value.shape[1]
                    flat = value.flatten(2).transpose(1, 2).cpu()  # B × (h·w) × C
                    sizes[layer] = memory_size(patches, max_distances, flat.shape[1])
                    keep = min(per_image, flat.shape[1])
                    order = torch.rand(count, flat.shape[1], generator=generator).argsort(dim=1)[:, :keep]
                    drawn = flat.gather(1, order[..., None].expand(-1, -1, channels))
                    parts[layer].append(drawn.flatten(0, 1))
        finally:
            model.train(was_training)
        banks = {}
        for layer, values in parts.items():
            if not values:
                raise ValueError("feature memory: no training images to build it from")
            bank = torch.cat(values)
            if len(bank) > sizes[layer]:
                bank = bank[torch.randperm(len(bank), generator=generator)[: sizes[layer]]]
            banks[layer] = bank.contiguous()
        return cls(banks, pool)

    def maps(self, model: nn.Module, network_input: Tensor, layers: Sequence[str],
             output_size: tuple[int, int]) -> dict[str, Tensor]:
        """``{layer: B×1×H×W}`` distance maps of a batch (``output_size`` = (H, W)), float32, detached."""
        missing = [layer for layer in layers if layer not in self.banks]
        if missing:
            raise ValueError(
                f"no feature memory at {', '.join(missing)} (it has: {', '.join(self.banks) or 'none'}); "
                "re-run `python -m anomaly_attn.evaluate ckpt_path=...`, which builds it from the training "
                "images, or leave those layers out of selection.feature_memory.layers"
            )
        features = layer_features(model, network_input, layers, self.pool)
        maps = {}
        for layer, value in features.items():
            count, channels, height, width = value.shape
            bank = self.banks[layer].to(value.device)
            queries = value.flatten(2).transpose(1, 2).reshape(-1, channels)
            distances = nearest_distances(queries, bank).view(count, 1, height, width)
            maps[layer] = F.interpolate(distances, size=output_size, mode="bilinear", align_corners=False)
        return maps

    def to(self, device: str | torch.device) -> FeatureMemory:
        self.banks = {layer: bank.to(device) for layer, bank in self.banks.items()}
        return self

    def state(self, layers: Iterable[str] | None = None) -> dict[str, Any] | None:
        """Plain data for a checkpoint (tensors on the CPU): the banks of ``layers`` (None: all); None
        when there is none to keep."""
        wanted = self.banks if layers is None else {k: v for k, v in self.banks.items() if k in set(layers)}
        if not wanted:
            return None
        return {"pool": self.pool, "banks": {layer: bank.cpu() for layer, bank in wanted.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> FeatureMemory:
        if not state:
            return cls()
        return cls(dict(state["banks"]), int(state.get("pool", 3)))

    def nbytes(self) -> int:
        return sum(bank.numel() * bank.element_size() for bank in self.banks.values())


def auto_memory_layers(
    shapes: Mapping[str, tuple[int, ...]], min_side: int = 4, max_side: int = 32
) -> list[str]:
    """``layers: auto``: the deepest layer at each spatial resolution whose sides are between
    ``min_side`` (coarser maps do not localize) and ``max_side`` (finer ones cost a distance per patch:
    a 64×64 layer costs 4× a 32×32 one) (``shapes``: layer → C×h×w output shape, in the model's order)."""
    deepest: dict[tuple[int, int], str] = {}
    for name, shape in shapes.items():
        if len(shape) == 3 and min(shape[1], shape[2]) >= min_side and max(shape[1], shape[2]) <= max_side:
            deepest[(shape[1], shape[2])] = name
    return list(deepest.values())
