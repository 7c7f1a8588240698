"""Scoring map specs on a labelled set: the base maps of many candidates at a reduced size
(:func:`collect_bases`), their exact pixel and image metrics (:class:`ValidationScorer`), every
candidate of a selection stage scored once (:class:`CandidateScores`), and scoring of specs on another
labelled set (:func:`score_specs_on`; :func:`score_specs_streaming` for a set given as batches, whose base
maps are kept on disk and read back one at a time, so memory does not grow with the number of specs;
:func:`spearman`).

Maps are scored at most ``max_map_size`` pixels on a side (:func:`selection_size`); a spec's smoothing σ,
given in pixels of the input image, is scaled to that size (:func:`max_map_size_ratio`).
"""

from __future__ import annotations

import math
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly_attn.common.progress import progress
from anomaly_attn.maps.engine import MapEngine
from anomaly_attn.maps.postprocess import image_scores
from anomaly_attn.maps.selection_result import Candidate
from anomaly_attn.maps.specs import MapSpec, ScoreSpec, render
from anomaly_attn.metrics.ranked import MaskSet, RankedMap, weighted_auroc

# Threads that score candidate maps next to the one rendering them (at most torch's intra-op threads).
_MAX_SCORING_THREADS = 4


class ValidationScorer:
    """Exact pixel and image metrics of candidate maps against one fixed labelled set, with optional
    per-image weights (a bootstrap resample); the masks' defect regions are labelled once."""

    def __init__(self, masks: Tensor, labels: Tensor, fpr_limit: float) -> None:
        self.mask_set = MaskSet(masks)
        self.labels = labels.cpu().numpy().astype(bool)
        self.fpr_limit = fpr_limit

    def ranked(self, maps: Tensor) -> RankedMap:
        return RankedMap(maps, self.mask_set)

    def pixel(self, maps: Tensor | RankedMap, weights: np.ndarray | None = None) -> dict[str, float]:
        ranked = maps if isinstance(maps, RankedMap) else self.ranked(maps)
        return ranked.metrics(weights, self.fpr_limit)

    def image(self, scores: Tensor, weights: np.ndarray | None = None) -> float:
        """Image AUROC (ties count half), each image counted ``weights[i]`` times."""
        return weighted_auroc(scores.detach().cpu().numpy(), self.labels, weights)


def selection_size(shape: Sequence[int], max_map_size: int) -> tuple[int, int]:
    """(h, w) of ``shape``'s last two dimensions scaled so that the longer side is ≤ ``max_map_size``."""
    height, width = int(shape[-2]), int(shape[-1])
    scale = min(1.0, max_map_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def downsample(maps: Tensor, max_map_size: int) -> Tensor:
    """``maps`` average-pooled to :func:`selection_size` (as they are if already that size)."""
    size = selection_size(maps.shape, max_map_size)
    return maps if tuple(maps.shape[-2:]) == size else F.adaptive_avg_pool2d(maps, size)


def max_map_size_ratio(image_side: int, max_map_size: int) -> float:
    """How much smaller (≤ 1) selection's maps are than the input image."""
    return min(1.0, max_map_size / float(image_side))


def base_keys(specs: Iterable[MapSpec]) -> tuple[set[tuple[str, ...]], set[str]]:
    """The layer base keys (attention, feature memory) of ``specs`` and the controls they need
    (residual_l2 always)."""
    layer_keys = {spec.base_key for spec in specs if not spec.is_control}
    controls = {spec.source for spec in specs if spec.is_control} | {"residual_l2"}
    return layer_keys, controls


@torch.no_grad()
def batch_bases(
    engine: MapEngine, images: Tensor, keys: tuple[set[tuple[str, ...]], set[str]], max_map_size: int
) -> dict[tuple[str, ...], Tensor]:
    """The base maps ``keys`` (:func:`base_keys`) of one batch, float32 on the CPU at most
    ``max_map_size`` pixels on a side."""
    batch = images.to(engine.device)
    network_input, reconstruction = engine.reconstruct(batch)
    bases = engine.base_maps(
        batch, reconstruction, network_input, *keys, attention_size=selection_size(batch.shape, max_map_size)
    )
    return {key: downsample(value.float(), max_map_size).cpu() for key, value in bases.items()}


def collect_bases(
    engine: MapEngine, images: Tensor, specs: Sequence[MapSpec], batch_size: int, max_map_size: int,
    description: str,
) -> dict[tuple[str, ...], Tensor]:
    """Base maps of ``specs`` (plus residual_l2) over all ``images``, downsampled to ``max_map_size``
    (``description``: what the progress bar says)."""
    keys = base_keys(specs)
    chunks: dict[tuple[str, ...], list[Tensor]] = {}
    starts = range(0, len(images), batch_size)
    with progress(description, len(starts)) as advance:
        for start in starts:
            bases = batch_bases(engine, images[start : start + batch_size], keys, max_map_size)
            for key, value in bases.items():
                chunks.setdefault(key, []).append(value)
            advance(1)
    return {key: torch.cat(values) for key, values in chunks.items()}


class CandidateScores:
    """Every candidate spec scored once on the labelled set of ``scorer``: its validation pixel metrics
    (``candidates``, in scoring order) and its image scores under each reduction (``image_scores``;
    the maps themselves are not kept).

    Use it as a context manager: the exact pixel metrics (numpy sorts and cumulative sums, which release
    the GIL) run on up to ``_MAX_SCORING_THREADS`` threads while the next maps render, so selection uses
    every core torch may use; at most ``2·workers`` maps wait. The numbers do not depend on it.
    """

    def __init__(
        self,
        scorer: ValidationScorer,
        bases: Mapping[tuple[str, ...], Tensor],
        sigma_scale: float,
        reductions: Sequence[str],
        topk_percent: float,
    ) -> None:
        self.scorer, self.bases, self.sigma_scale = scorer, bases, sigma_scale
        self.reductions, self.topk_percent = list(reductions), topk_percent
        self.candidates: dict[MapSpec, Candidate] = {}
        self.image_scores: dict[ScoreSpec, Tensor] = {}
        self.workers = min(torch.get_num_threads(), _MAX_SCORING_THREADS)
        self.pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> CandidateScores:
        self.pool = ThreadPoolExecutor(max_workers=self.workers) if self.workers > 1 else None
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def render(self, spec: MapSpec) -> Tensor:
        """The map of ``spec`` at the scored size."""
        return render(spec, self.bases, self.sigma_scale)

    def evaluate(
        self, specs: Iterable[MapSpec], stage: int, advance: Callable[[int], None] | None = None
    ) -> None:
        """Score each spec not scored yet, in order, as a candidate of ``stage`` (``advance``: the
        progress bar to move, else one of its own)."""
        new_specs = [spec for spec in dict.fromkeys(specs) if spec not in self.candidates]
        if advance is not None:
            self._score(new_specs, stage, advance)
            return
        with progress(f"selection: stage {stage} candidate maps", len(new_specs)) as own:
            self._score(new_specs, stage, own)

    def _score(self, specs: Sequence[MapSpec], stage: int, advance: Callable[[int], None]) -> None:
        pending: deque[tuple[MapSpec, Any]] = deque()

        def collect(limit: int) -> None:
            while len(pending) > limit:
                done, future = pending.popleft()
                self.candidates[done] = Candidate(done, stage, future.result())
                advance(1)

        for spec in specs:
            maps = self.render(spec)
            if self.pool is None:
                self.candidates[spec] = Candidate(spec, stage, self.scorer.pixel(maps))
                advance(1)
            else:
                pending.append((spec, self.pool.submit(self.scorer.pixel, maps)))
            for reduction in dict.fromkeys([*self.reductions, "max"]):
                score = ScoreSpec(spec, reduction, self.topk_percent)
                self.image_scores[score] = score.scores(maps)
            collect(2 * self.workers)
        collect(0)


def score_specs_on(
    engine: MapEngine,
    images: Tensor,
    masks: Tensor,
    labels: Tensor,
    specs: Sequence[MapSpec],
    *,
    batch_size: int = 32,
    max_map_size: int = 128,
    description: str = "scoring: base maps",
) -> dict[MapSpec, dict[str, float]]:
    """Pixel AUROC/AUPRO and image AUROC (max) of ``specs`` on a labelled set, for post-hoc analysis
    (``description``: what the progress bar says)."""
    bases_of = [replace(s, fusion="none", smoothing_sigma=0.0, zsum_stats=None) for s in specs]
    bases = collect_bases(engine, images, bases_of, batch_size, max_map_size, description)
    fpr_limit = float(engine.evaluation["fpr_limit"])
    scorer = ValidationScorer(downsample(masks.float(), max_map_size).round(), labels, fpr_limit)
    sigma_scale = max_map_size_ratio(images.shape[-1], max_map_size)
    results = {}
    for spec in specs:
        maps = render(spec, bases, sigma_scale)
        results[spec] = {**scorer.pixel(maps), "image_auroc": scorer.image(image_scores(maps, "max"))}
    return results


_RESIDUAL = ("residual_l2",)


def rebatched(batches: Iterable[Mapping[str, Tensor]], batch_size: int) -> Iterator[dict[str, Tensor]]:
    """The images, masks and labels of ``batches`` cut again into batches of ``batch_size`` (the last one
    smaller): a dataloader's images get their maps in the batches :func:`collect_bases` would use."""
    names = ("image", "mask", "label")
    held: list[Mapping[str, Tensor]] = []
    count = 0
    for batch in batches:
        held.append(batch)
        count += len(batch["image"])
        while count >= batch_size:
            joined = {name: torch.cat([part[name] for part in held]) for name in names}
            yield {name: value[:batch_size] for name, value in joined.items()}
            held = [{name: value[batch_size:] for name, value in joined.items()}]
            count -= batch_size
    if count:
        yield {name: torch.cat([part[name] for part in held]) for name in names}


@dataclass
class SpilledBases:
    """Base maps of a labelled set on disk, one raw float32 file per base key (``files``: path and the
    shape of one image's map), with the set's masks (downsampled like the maps), labels and image width."""

    files: dict[tuple[str, ...], tuple[Path, tuple[int, ...]]]
    masks: Tensor
    labels: Tensor
    image_width: int

    def load(self, key: tuple[str, ...]) -> Tensor:
        """The base map ``key`` of every image, read back into memory."""
        path, shape = self.files[key]
        return torch.from_numpy(np.fromfile(path, dtype=np.float32)).reshape(-1, *shape)


def spill_bases(
    engine: MapEngine, batches: Iterable[Mapping[str, Tensor]], specs: Sequence[MapSpec], directory: Path,
    *, batch_size: int, max_map_size: int, num_images: int = 0, description: str,
) -> SpilledBases:
    """The base maps of ``specs`` (plus residual_l2) of each batch, computed as :func:`collect_bases` does
    and appended to their files in ``directory`` batch by batch: memory holds one batch's maps, never the
    set's (``num_images``: the progress bar's length, 0 for none)."""
    keys = base_keys(specs)
    files: dict[tuple[str, ...], tuple[Path, tuple[int, ...]]] = {}
    masks, labels, width = [], [], 0
    with ExitStack() as handles, progress(description, num_images) as advance:
        opened: dict[tuple[str, ...], Any] = {}
        for batch in rebatched(batches, batch_size):
            for key, value in batch_bases(engine, batch["image"], keys, max_map_size).items():
                if key not in opened:
                    path = Path(directory) / f"base_{len(opened)}.f32"
                    opened[key] = handles.enter_context(path.open("wb"))
                    files[key] = (path, tuple(value.shape[1:]))
                opened[key].write(value.numpy().tobytes())
            masks.append(downsample(batch["mask"].float(), max_map_size))
            labels.append(batch["label"])
            width = int(batch["image"].shape[-1])
            advance(len(batch["image"]))
    if not masks:
        raise ValueError(f"{description}: no images to score")
    return SpilledBases(files, torch.cat(masks).round(), torch.cat(labels), width)


def score_spilled(
    spilled: SpilledBases, specs: Sequence[MapSpec], fpr_limit: float, max_map_size: int, description: str
) -> dict[MapSpec, dict[str, float]]:
    """Pixel AUROC/AUPRO and image AUROC (max) of ``specs``, as :func:`score_specs_on` scores them, one
    base at a time: residual_l2 (when a fusion needs it) and one other base are in memory at once, each
    candidate's map is scored (on :class:`CandidateScores`' threads) and dropped."""
    scorer = ValidationScorer(spilled.masks, spilled.labels, fpr_limit)
    sigma_scale = max_map_size_ratio(spilled.image_width, max_map_size)
    groups: dict[tuple[str, ...], list[MapSpec]] = {}
    for spec in dict.fromkeys(specs):
        groups.setdefault(spec.base_key, []).append(spec)
    residual = spilled.load(_RESIDUAL) if any(spec.fusion != "none" for spec in specs) else None
    with (
        CandidateScores(scorer, {}, sigma_scale, ["max"], 1.0) as scores,
        progress(description, sum(len(group) for group in groups.values())) as advance,
    ):
        for key, group in groups.items():
            base = residual if key == _RESIDUAL and residual is not None else spilled.load(key)
            scores.bases = {key: base} if residual is None else {_RESIDUAL: residual, key: base}
            scores.evaluate(group, 0, advance)
            scores.bases, base = {}, None
    return {
        spec: {
            **scores.candidates[spec].validation,
            "image_auroc": scorer.image(scores.image_scores[ScoreSpec(spec, "max", 1.0)]),
        }
        for spec in specs
    }


def score_specs_streaming(
    engine: MapEngine, batches: Iterable[Mapping[str, Tensor]], specs: Sequence[MapSpec], *,
    batch_size: int = 32, max_map_size: int = 128, num_images: int = 0, description: str = "scoring",
) -> dict[MapSpec, dict[str, float]]:
    """:func:`score_specs_on`'s numbers for a labelled set given as batches (``image``, ``mask``,
    ``label``; a test dataloader), never all in memory: the base maps go batch by batch to a temporary
    folder (``$TMPDIR``), then each base is read back once and its candidates scored (:func:`score_spilled`).
    Memory does not grow with the number of specs."""
    with tempfile.TemporaryDirectory(prefix="anomaly_attn_bases_") as directory:
        spilled = spill_bases(
            engine, batches, specs, Path(directory), batch_size=batch_size, max_map_size=max_map_size,
            num_images=num_images, description=f"{description}: base maps",
        )
        fpr_limit = float(engine.evaluation["fpr_limit"])
        return score_spilled(spilled, specs, fpr_limit, max_map_size, f"{description}: candidate maps")


def spearman(pairs: Sequence[tuple[float, float]]) -> float:
    """Spearman rank correlation of (validation, test) pairs; nan for fewer than 3 finite pairs."""
    from scipy.stats import spearmanr

    finite = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    if len(finite) < 3:
        return float("nan")
    value = spearmanr(np.array(finite)[:, 0], np.array(finite)[:, 1]).statistic
    return float(value)
