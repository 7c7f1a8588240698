"""Feature-memory maps (``selection.feature_memory``): building the memory, its size, and the maps.

    python -m benchmarks.bench_feature_memory          # prints the rows

An untrained conv_ae (eval mode, seed 0) at ELPV's size (1 channel, 128²), ``layers: auto`` (the deepest
layer at each resolution from 4×4 to 32×32: 4 layers) and the defaults ``patches: 16384``,
``max_distances: 4194304`` (the 32×32 layer keeps 4096 patches), ``pool: 3``. The
images are seeded smooth noise (the cost does not depend on the pixels).

- build: ``FeatureMemory.build`` over 441 training images (ELPV mono's training set) in batches of 32,
  against one plain forward pass of the model over the same images (what any use of the images costs);
  one run each, alternated after an untimed call (documented).
- memory: the banks' bytes against their bound, ``Σ min(patches, max_distances / (h·w)) × channels × 4``
  over the layers (target ≤ 1).
- maps: ``FeatureMemory.maps`` at the 4 layers for a batch of 32 test images, against the engine's
  reconstruction + ``residual_l2`` map of the same batch (one forward; what the residual costs);
  median of alternated calls (documented: what each candidate layer adds to selection and testing).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from anomaly_attn.maps.engine import MapEngine
from anomaly_attn.maps.feature_memory import (
    MAX_DISTANCES,
    FeatureMemory,
    auto_memory_layers,
    memory_size,
)
from anomaly_attn.maps.specs import MapSpec
from anomaly_attn.models import create_model, layer_shapes
from benchmarks.bench_metrics import _alternating_median


def _images(count: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.rand(count, 1, size, size, generator=generator), 5, 1, 2)


def run(
    n_train: int = 441, image_size: int = 128, batch_size: int = 32, patches: int = 16384, repeats: int = 5,
    seed: int = 0, max_distances: int = MAX_DISTANCES,
) -> list[dict]:
    """Rows ``{benchmark, ours, unit, reference, reference_value, ratio, target, passed}``."""
    torch.manual_seed(seed)
    model = create_model("conv_ae", image_size=image_size, in_channels=1).eval()
    shapes = layer_shapes(model, image_size, 1)
    layers = auto_memory_layers(shapes)
    train = _images(n_train, image_size, seed)
    batches = train.split(batch_size)

    def build() -> FeatureMemory:
        return FeatureMemory.build(model, batches, n_train, layers, patches, pool=3, seed=seed,
                                   max_distances=max_distances)

    def forward() -> None:
        with torch.no_grad():
            for batch in batches:
                model(batch)

    build_s = _alternating_median({"build": build, "forward": forward}, 1)
    memory = build()
    engine = MapEngine(model, image_size, 1, {"variant": "mean_abs_cam"}, center_input=False)
    engine.memory = memory
    test = _images(batch_size, image_size, seed + 1)
    size = (image_size, image_size)
    maps_s = _alternating_median(
        {
            "maps": lambda: memory.maps(model, test, layers, size),
            "residual": lambda: engine.render_specs(test, [MapSpec("residual_l2")]),
        },
        repeats,
    )
    bound = 0
    for layer in layers:
        channels, height, width = shapes[layer]
        kept = min(memory_size(patches, max_distances, height * width), n_train * height * width)
        bound += kept * channels * 4
    where = f"conv_ae, {len(layers)} layers ({', '.join(layers)}), 1×{image_size}²"
    return [
        {
            "benchmark": f"feature memory: build from {n_train} training images, at most {patches} patches "
            f"per layer and {max_distances} distances per image, {where}",
            "ours": build_s["build"], "unit": "s",
            "reference": f"one forward pass over the same {n_train} images",
            "reference_value": build_s["forward"], "ratio": build_s["build"] / build_s["forward"],
            "target": "documented", "passed": None,
        },
        {
            "benchmark": f"feature memory: size of the banks, {where}",
            "ours": memory.nbytes() / 1e6, "unit": "MB",
            "reference": "bound: Σ min(patches, max_distances / (h·w)) × channels × 4 bytes",
            "reference_value": bound / 1e6, "ratio": memory.nbytes() / bound,
            "target": "<= 1", "passed": memory.nbytes() <= bound,
        },
        {
            "benchmark": f"feature memory: distance maps at all {len(layers)} layers, {batch_size} test "
            f"images, {where}",
            "ours": maps_s["maps"], "unit": "s",
            "reference": f"reconstruction + residual_l2 map of the same {batch_size} images",
            "reference_value": maps_s["residual"], "ratio": maps_s["maps"] / maps_s["residual"],
            "target": "documented", "passed": None,
        },
    ]


if __name__ == "__main__":
    start = time.perf_counter()
    for row in run():
        print(row)
    print(f"{time.perf_counter() - start:.1f} s")
