"""Maps at every spatial layer of conv_ae from one call, against one layer's map, on the same batch.

    python -m benchmarks.bench_layers          # prints the rows

Ours: ``attention_maps_all_layers`` at every spatial layer of conv_ae (``encoder.0`` … ``encoder.26``)
for the variants ``mean_abs_cam, gradcam_abs, layercam, gradcam_pp``: one forward, one backward to all 27
layers, 108 maps upsampled to the input size. Reference: ``attention_map`` at the default layer with
``mean_abs_cam``: one forward, a backward to that layer, one map. An untrained conv_ae in eval mode on one
seeded batch of uniform random images (the cost does not depend on the pixels); 1 channel at 64 px,
3 at 256 px (the research code's MVTec size). Every call pays its full cost (nothing is kept between calls);
one untimed call of each first, then the median of ``repeats`` calls, alternated so that load from
other processes hits both sides alike.
"""

from __future__ import annotations

import torch

from anomaly_attn.maps import attention_map, attention_maps_all_layers
from anomaly_attn.models import create_model, layer_shapes
from benchmarks.bench_metrics import _alternating_median

VARIANTS = ("mean_abs_cam", "gradcam_abs", "layercam", "gradcam_pp")
# (image size, channels): the textures' gray 64 px and MVTec's RGB 256 px.
SIZES = ((64, 1), (256, 3))


def _row(image_size: int, channels: int, batch_size: int, repeats: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = create_model("conv_ae", image_size=image_size, in_channels=channels).eval()
    images = torch.rand(batch_size, channels, image_size, image_size)
    shapes = layer_shapes(model, image_size, channels)
    layers = [name for name, shape in shapes.items() if len(shape) == 3]
    seconds = _alternating_median(
        {
            "all": lambda: attention_maps_all_layers(model, images, layers, VARIANTS),
            "one": lambda: attention_map(model, images, model.default_layer, "mean_abs_cam").detach(),
        },
        repeats,
    )
    shape = f"{batch_size}×{channels}×{image_size}²"
    return _ratio_row(
        f"attention maps at all {len(layers)} spatial layers × {len(VARIANTS)} variants "
        f"({', '.join(VARIANTS)}), one call, {shape}",
        f"one layer's map (attention_map, {model.default_layer}, mean_abs_cam), {shape}",
        seconds,
    )


def _ratio_row(benchmark: str, reference: str, seconds: dict[str, float]) -> dict:
    """A BENCHMARKS.md row: ``all`` against ``one`` seconds, target ratio ≤ 3."""
    ratio = seconds["all"] / seconds["one"]
    return {
        "benchmark": benchmark,
        "ours": seconds["all"],
        "unit": "s",
        "reference": reference,
        "reference_value": seconds["one"],
        "ratio": ratio,
        "target": "<= 3",
        "passed": ratio <= 3,
    }


def _selection_row(image_size: int, channels: int, batch_size: int, repeats: int, seed: int) -> dict:
    """What map selection computes per batch: every spatial layer from one backward, each variant only
    where it is attention (the alpha-based ones skipped at layers measured degenerate), upsampled to the
    scoring size (``selection.max_map_size``) — against one layer's map at that same size."""
    from anomaly_attn.maps.engine import MapEngine
    from anomaly_attn.maps.gradient import alpha_variants
    from anomaly_attn.maps.health import alpha_health
    from anomaly_attn.maps.scoring import selection_size
    from anomaly_attn.maps.selection_result import SelectionSettings

    torch.manual_seed(seed)
    model = create_model("conv_ae", image_size=image_size, in_channels=channels).eval()
    images = torch.rand(batch_size, channels, image_size, image_size)
    shapes = layer_shapes(model, image_size, channels)
    layers = [name for name, shape in shapes.items() if len(shape) == 3]
    health = alpha_health(model, images[:16], layers)  # once per selection, not per batch: untimed
    keys = [
        ("attention", layer, variant, "image")
        for layer in layers
        for variant in VARIANTS
        if not (health[layer].degenerate and variant in alpha_variants())
    ]
    size = selection_size(images.shape, SelectionSettings().max_map_size)
    engine = MapEngine(model, image_size, channels, {"variant": "mean_abs_cam"}, center_input=False)
    network_input, reconstruction = engine.reconstruct(images)
    seconds = _alternating_median(
        {
            "all": lambda: engine.base_maps(
                images, reconstruction, network_input, keys, [], attention_size=size
            ),
            "one": lambda: attention_map(
                model, images, model.default_layer, "mean_abs_cam", output_size=size
            ).detach(),
        },
        repeats,
    )
    shape = f"{batch_size}×{channels}×{image_size}²"
    return _ratio_row(
        f"selection's maps: all {len(layers)} spatial layers, {len(keys)} (layer, variant) maps valid "
        f"there, one backward, at the scoring size {size[0]}², {shape}",
        f"one layer's map (attention_map, {model.default_layer}, mean_abs_cam) at {size[0]}², {shape}",
        seconds,
    )


def run(
    sizes: tuple[tuple[int, int], ...] = SIZES, batch_size: int = 32, repeats: int = 5, seed: int = 0
) -> list[dict]:
    """Rows ``{benchmark, ours, unit, reference, reference_value, ratio, target, passed}`` in seconds;
    ``ratio = ours / reference`` (lower is better): per ``(image size, channels)``, the raw all-layers
    call (every variant at every layer, at the input size; documented) and what selection computes
    (the target)."""
    rows = []
    for image_size, channels in sizes:
        raw = _row(image_size, channels, batch_size, repeats, seed)
        rows.append({**raw, "target": "documented", "passed": None})
        rows.append(_selection_row(image_size, channels, batch_size, repeats, seed))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
