"""Cost of the faithfulness checks of a run (``faithfulness`` defaults) against scoring the same images
once the way the test step does.

    python -m benchmarks.bench_faithfulness        # prints the rows

Data: ``n_images`` smooth random images of ``size``² with a bright disc each, a ``conv_ae`` with its
seeded initial weights (the cost does not depend on training), the selected map fixed to
``layercam@encoder.2`` with the image score ``max of residual_l2``. Checked: 7 maps, as a run with
selection checks them (the selected map, one unfused map per attention variant, ``residual_l2``,
``image_highpass``). Timed, each call paying its full cost: :func:`check_maps` with the default settings
(5 deletion and 5 insertion fractions, 4 cascade depths, B = 1000), against one
``engine.compute_maps`` + ``map_scores`` pass over the same images (the test step's maps and scores).
Wall-clock seconds, median of alternated rounds after one untimed call of each.
"""

from __future__ import annotations

import time

import torch

from anomaly_attn.maps.faithfulness import FaithfulnessSettings, check_maps
from anomaly_attn.maps.specs import MapSpec, ScoreSpec
from anomaly_attn.training.module import AnomalyModule
from benchmarks.bench_intervals import _row
from benchmarks.bench_metrics import _alternating_median

CHECKED = {
    "selected": MapSpec("attention", "encoder.2", "layercam", "residual", "none", 0.0),
    "mean_abs_cam": MapSpec("attention", "encoder.16", "mean_abs_cam", "residual", "none", 0.0),
    "gradcam_abs": MapSpec("attention", "encoder.5", "gradcam_abs", "residual", "none", 1.0),
    "gradcam_pp": MapSpec("attention", "encoder.2", "gradcam_pp", "image", "none", 0.0),
    "layercam": MapSpec("attention", "encoder.8", "layercam", "residual", "none", 0.0),
    "residual_l2": MapSpec("residual_l2"),
    "image_highpass": MapSpec("image_highpass"),
}


def images_with_discs(count: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, size // 8, size // 8, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear") * 0.5 + 0.25
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    radius = max(2, size // 16)
    for image in images:
        row, col = torch.randint(radius, size - radius, (2,), generator=generator)
        disc = ((rows - row) ** 2 + (cols - col) ** 2 <= radius**2).float()
        image[0] = image[0] * (1 - disc) + disc
    return images


def run(size: int = 128, n_images: int = 16, repeats: int = 1) -> list[dict]:
    """One row ``{benchmark, ours, unit, reference, reference_value, ratio, target, passed}``."""
    torch.manual_seed(0)
    module = AnomalyModule({"name": "conv_ae", "image_size": size, "in_channels": 1}, {"mse": 1.0},
                           {"variant": "layercam", "input": "residual", "smoothing_sigma": 0.0,
                            "fusion": "none"}, layer="encoder.2").eval()
    engine = module.engine
    engine.set_selected_maps(CHECKED["selected"], ScoreSpec(MapSpec("residual_l2"), "max"))
    images = images_with_discs(n_images, size)
    settings = FaithfulnessSettings(images=n_images)

    def checks() -> object:
        return check_maps(engine, images, CHECKED, settings)

    def test_pass() -> object:
        return engine.map_scores(engine.compute_maps(images)[0])

    seconds = _alternating_median({"checks": checks, "test": test_pass}, 2 * repeats - 1, time.perf_counter)
    return [_row(
        f"faithfulness checks (defaults: 5 deletion + 5 insertion fractions, 4 randomization depths, "
        f"B = 1000) of {len(CHECKED)} maps on {n_images} images of {size}², conv_ae",
        seconds["checks"], "s", f"one compute_maps + map_scores pass over the same {n_images} images",
        seconds["test"], "documented", None,
    )]


if __name__ == "__main__":
    for row in run():
        print(row)
