"""Post-hoc test scoring (``selection.posthoc_test``) streams: the same numbers as scoring the whole test
set in memory (``score_specs_on``), with at most residual_l2 and one other base map in memory at once,
however many candidates there are."""

from __future__ import annotations

import gc
import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from anomaly_attn.common.objectives import objective_value
from anomaly_attn.maps import scoring
from anomaly_attn.maps.engine import MapEngine
from anomaly_attn.maps.scoring import rebatched, score_specs_on, spearman
from anomaly_attn.maps.selection_result import Candidate, SelectionResult
from anomaly_attn.maps.specs import MapSpec, ScoreSpec
from anomaly_attn.models import create_model
from anomaly_attn.training.selection_step import posthoc_test_analysis
from tests.fixtures import planted_set

SIZE = 64
OBJECTIVE = "mean_auroc_aupro"



@pytest.fixture(scope="module")
def engine() -> MapEngine:
    torch.manual_seed(0)
    model = create_model("conv_ae", image_size=SIZE, in_channels=1).eval()
    return MapEngine(model, SIZE, 1, {"variant": "mean_abs_cam"}, center_input=False)


def _grid(layers: list[str], variants: list[str]) -> list[MapSpec]:
    """Every base of ``layers`` × ``variants`` × both inputs, fused and smoothed, and two controls."""
    specs = []
    for layer in layers:
        for variant in variants:
            for source in ("residual", "image"):
                base = MapSpec("attention", layer, variant, source)
                specs += [base, MapSpec("attention", layer, variant, source, "product", 2.0),
                          MapSpec("attention", layer, variant, source, "zsum", 1.0, (0.1, 0.5, 0.02, 0.03))]
    return [*specs, MapSpec("residual_l2"), MapSpec("residual_ssim", smoothing_sigma=1.0)]


def _job(specs: list[MapSpec], chosen: MapSpec, loader_batch: int = 5) -> tuple:
    """cfg, module, datamodule and selection result as the post-hoc step gets them: the test set from a
    dataloader whose batches (5) differ from ``dataset.batch_size`` (4); made-up validation scores."""
    images, masks, labels = planted_set(count=7, size=SIZE, seed=1)
    samples = [{"image": i, "mask": m, "label": lb} for i, m, lb in zip(images, masks, labels, strict=True)]
    datamodule = SimpleNamespace(test_dataloader=lambda: DataLoader(samples, batch_size=loader_batch))
    candidates = [
        Candidate(spec, 1, {"pixel_auroc": 0.5 + 0.01 * (index % 7), "pixel_aupro": 0.3 + 0.02 * (index % 5)})
        for index, spec in enumerate(specs)
    ]
    result = SelectionResult(chosen, ScoreSpec(chosen), OBJECTIVE, candidates, [], {}, {}, 0.0)
    cfg = OmegaConf.create({"dataset": {"batch_size": 4}, "selection": {"max_map_size": 32}})
    return cfg, (images, masks, labels), datamodule, result


@pytest.mark.parametrize("chosen_is_candidate", [True, False])
def test_streamed_posthoc_scores_equal_the_in_memory_ones(
    engine: MapEngine, chosen_is_candidate: bool
) -> None:
    specs = _grid(["encoder.16", "encoder.20"], ["mean_abs_cam", "layercam"])
    chosen = specs[1] if chosen_is_candidate else MapSpec("residual_highpass", smoothing_sigma=2.0)
    cfg, (images, masks, labels), datamodule, result = _job(specs, chosen)
    facts = posthoc_test_analysis(cfg, SimpleNamespace(engine=engine), datamodule, result)

    everything = list(dict.fromkeys([*specs, chosen]))
    expected = score_specs_on(engine, images, masks, labels, everything, batch_size=4, max_map_size=32)
    assert all(math.isfinite(value) for scores in expected.values() for value in scores.values())
    for candidate in result.candidates:
        assert candidate.test == expected[candidate.spec]  # bit for bit
    pairs = [(objective_value(c.validation, OBJECTIVE), objective_value(c.test, OBJECTIVE))
             for c in result.candidates]
    assert facts["posthoc_spearman"] == spearman(pairs)
    tested = {spec: objective_value(scores, OBJECTIVE) for spec, scores in expected.items()}
    best = max(tested, key=tested.__getitem__)
    assert facts["posthoc_regret"] == tested[best] - tested[chosen] >= 0.0
    assert facts["posthoc_best"] == best.label
    assert facts["posthoc_seconds"] >= 0.0


def test_rebatched_cuts_batches_to_the_requested_size() -> None:
    batches = [{name: torch.arange(n) for name in ("image", "mask", "label")} for n in (5, 5, 3)]
    cut = list(rebatched(batches, 4))
    assert [len(batch["image"]) for batch in cut] == [4, 4, 4, 1]
    assert torch.equal(torch.cat([batch["label"] for batch in cut]), torch.cat([b["label"] for b in batches]))


def _scored_maps_alive(count: int, side: int = 32) -> int:
    """How many ``count``×1×``side``×``side`` tensors (maps of the test set at the scored size: base maps,
    rendered maps, the downsampled masks) are alive; in-memory scoring holds every base at once."""
    gc.collect()
    return sum(
        1 for item in gc.get_objects()
        if type(item) is torch.Tensor and tuple(item.shape) == (count, 1, side, side)
    )


def _peak_while_rendering(engine: MapEngine, specs: list[MapSpec], monkeypatch: pytest.MonkeyPatch) -> tuple:
    """(most base maps handed to one render, most test-set maps alive at a render) over a post-hoc run."""
    cfg, (images, _, _), datamodule, result = _job(specs, specs[0])
    count, seen = len(images), {"bases": 0, "alive": 0}
    original = scoring.render

    def counting_render(spec, bases, sigma_scale=1.0):
        seen["bases"] = max(seen["bases"], len(bases))
        seen["alive"] = max(seen["alive"], _scored_maps_alive(count))
        return original(spec, bases, sigma_scale)

    monkeypatch.setattr(scoring, "render", counting_render)
    posthoc_test_analysis(cfg, SimpleNamespace(engine=engine), datamodule, result)
    assert all(candidate.test is not None for candidate in result.candidates)
    return seen["bases"], seen["alive"]


def test_posthoc_memory_does_not_grow_with_the_number_of_bases(
    engine: MapEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 attention bases or 8: residual_l2 and one base are in memory at a time, and as many maps of the
    test set are alive (those two, the masks, the previous candidate's map); scoring all bases in memory
    (the former ``score_specs_on`` path) holds 9 bases at once with 8."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # no scoring threads: the maps alive at a render do not depend on timing
    try:
        small = _peak_while_rendering(engine, _grid(["encoder.16"], ["mean_abs_cam"]), monkeypatch)
        large = _peak_while_rendering(
            engine, _grid(["encoder.16", "encoder.20"], ["mean_abs_cam", "layercam"]), monkeypatch
        )
    finally:
        torch.set_num_threads(threads)
    assert small[0] <= 2 and large[0] <= 2, (small, large)
    assert large[1] == small[1] <= 4, (small, large)


def test_the_selection_table_gives_the_regret_next_to_the_spearman(tmp_path) -> None:
    from anomaly_attn.reporting.runs import Run
    from anomaly_attn.reporting.tables import selection_markdown

    def run(name: str, selection: dict) -> Run:
        (tmp_path / name).mkdir()
        metrics = {"dataset": "textures", "category": name, "selected_map": "residual_l2",
                   "pixel_auroc": 0.9, "selection": selection}
        return Run(tmp_path / name, metrics)

    table = selection_markdown([
        run("brick", {"posthoc_spearman": 0.8, "posthoc_regret": 0.0125}),
        run("grass", {"posthoc_spearman": 0.5}),  # a run written before the regret was recorded
    ])
    assert "brick 0.800 (regret 0.013), grass 0.500" in table


@pytest.mark.slow
def test_the_posthoc_benchmark_runs_on_a_tiny_set() -> None:
    from benchmarks import bench_posthoc

    rows = bench_posthoc.run(sets=((64, 40, 6, 6),))
    assert [row["target"] for row in rows] == ["documented", "documented", "<= 1.1"]
    assert "12 test images of 64²" in rows[0]["benchmark"] and rows[0]["ours"] > 0
    assert rows[2]["ours"] > 0 and rows[2]["reference_value"] > 0
