"""Is a map an explanation? Two checks of a trained model's maps on a seeded subset of anomalous test
images, after testing (analysis only: nothing here chooses a map, a layer or a threshold).

**Deletion / insertion.** For each map, the ``k`` % of an image's pixels the map ranks highest
(k = 1, 2, 5, 10, 20 by default) are replaced by the model's reconstruction of the image (or, with
``replace: blur``, by a Gaussian blur of it), and the model's image anomaly score (the run's selected
score: what the map should explain) is computed again on the edited image. Scores are normalised per
image to 1 on the original image and 0 on the fully replaced one, so a curve reads "the part of the
anomaly score left" (images whose score does not drop when every pixel is replaced are left out;
``n_images_scored`` counts the rest). The area under the deletion curve over ``[0, max k]`` (divided by
``max k``) is low for a map whose top pixels are what the score reacts to; insertion starts from the
replaced image and puts the original pixels back in the map's order (high area = faithful). Every map
is compared with a random map (a seeded random pixel order) and with ``residual_l2``: the paired
per-image difference of areas, with a bootstrap interval over the images.

**Model randomization** (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018). The
model's parameterised layers are re-initialised one by one from the output end (the order in which the
model registers them, last first: a cascade), and at each depth in ``cascade`` (a fraction of the layers)
every map is computed again with the partly random model and compared with the trained model's map:
Spearman rank correlation of the pixels and SSIM of the min-max normalised maps, per image. A map that
is still similar to the trained one with every layer random (Spearman ≥ ``unchanged_spearman``) does not
depend on what the model learned and is flagged ``unchanged``; a map that is exactly the same at every
depth (the model-free image high-pass) is ``model-independent``, which is what it is, not a failure.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure

from anomaly_attn.maps.engine import MapEngine
from anomaly_attn.maps.postprocess import gaussian_smooth
from anomaly_attn.maps.specs import MapSpec
from anomaly_attn.metrics.intervals import interval

REPLACEMENTS = ("reconstruction", "blur")


@dataclass
class FaithfulnessSettings:
    """The ``faithfulness`` config node (conf/config.yaml). ``images``: size of the seeded subset of
    anomalous test images (0: off)."""

    images: int = 16
    seed: int = 0
    fractions: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10, 0.20)
    replace: str = "reconstruction"
    blur_sigma: float = 4.0
    cascade: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    unchanged_spearman: float = 0.5
    resamples: int = 1000
    level: float = 0.95
    batch_size: int = 16

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> FaithfulnessSettings:
        node = dict(node or {})
        unknown = sorted(set(node) - set(cls.__dataclass_fields__))
        if unknown:
            valid = sorted(cls.__dataclass_fields__)
            raise ValueError(f"faithfulness: unknown key(s) {unknown}; valid: {valid}")
        for key in ("fractions", "cascade"):
            if key in node:
                node[key] = tuple(float(value) for value in node[key])
        settings = cls(**node)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse settings the checks cannot run with, naming the key and what is valid."""
        if self.images < 0 or self.batch_size < 1 or self.resamples < 0:
            raise ValueError("faithfulness.images and .resamples must be >= 0 and .batch_size >= 1")
        fractions = list(self.fractions)
        if not fractions or fractions != sorted(set(fractions)) or not 0 < fractions[0] <= fractions[-1] < 1:
            raise ValueError(
                f"faithfulness.fractions={fractions}: need increasing fractions of the pixels in (0, 1), "
                "e.g. [0.01, 0.02, 0.05, 0.1, 0.2]"
            )
        if self.replace not in REPLACEMENTS:
            raise ValueError(f"faithfulness.replace={self.replace!r}; valid: {list(REPLACEMENTS)}")
        cascade = list(self.cascade)
        if cascade and (cascade != sorted(set(cascade)) or not 0 < cascade[0] <= cascade[-1] <= 1):
            raise ValueError(
                f"faithfulness.cascade={cascade}: need increasing fractions of the layers in (0, 1] "
                "(e.g. [0.25, 0.5, 0.75, 1.0]), or [] to skip model randomization"
            )
        if not 0.0 < self.level < 1.0 or self.blur_sigma <= 0:
            raise ValueError("faithfulness.level must be in (0, 1) and faithfulness.blur_sigma > 0")

    def to_dict(self) -> dict[str, Any]:
        items = asdict(self).items()
        return {key: list(value) if isinstance(value, tuple) else value for key, value in items}


def subset_indices(labels: Sequence[int], size: int, seed: int) -> list[int]:
    """Indices of at most ``size`` anomalous images (label 1), drawn with ``seed``, in ascending order."""
    anomalous = np.flatnonzero(np.asarray(labels) == 1)
    if len(anomalous) <= size:
        return anomalous.tolist()
    chosen = np.random.default_rng(seed).choice(anomalous, size=size, replace=False)
    return sorted(int(index) for index in chosen)


def _batched(engine: MapEngine, images: Tensor, batch_size: int, compute: Any) -> Any:
    """``compute(batch)`` over ``images`` in chunks on the engine's device, outputs concatenated (a
    tensor, or a list of tensors elementwise)."""
    parts = [compute(images[start : start + batch_size].to(engine.device))
             for start in range(0, len(images), batch_size)]
    if isinstance(parts[0], Tensor):
        return torch.cat([part.detach().float().cpu() for part in parts])
    return [torch.cat([part[i].detach().float().cpu() for part in parts]) for i in range(len(parts[0]))]


def image_score(engine: MapEngine, images: Tensor, batch_size: int) -> Tensor:
    """The model's image anomaly score (the run's selected score, as ``map_scores`` gives it) of each
    image; only the map the score reads is computed."""

    def score(batch: Tensor) -> Tensor:
        return engine.score_spec.scores(engine.render_specs(batch, [engine.score_spec.map])[0][0])

    return _batched(engine, images, batch_size, score)


def render(engine: MapEngine, images: Tensor, specs: Sequence[MapSpec], batch_size: int) -> list[Tensor]:
    """The maps of ``specs`` for ``images`` (N×1×H×W each, float32, on the CPU)."""
    return _batched(engine, images, batch_size, lambda batch: engine.render_specs(batch, specs)[0])


def pixel_order(maps: Tensor) -> Tensor:
    """Per image, flat pixel indices from the highest map value down (ties in index order)."""
    return torch.argsort(maps.flatten(1), dim=1, descending=True, stable=True)


def top_mask(order: Tensor, fraction: float, shape: torch.Size) -> Tensor:
    """N×1×H×W {0, 1} mask of the ``ceil(fraction · H·W)`` first pixels of ``order``."""
    count = max(1, math.ceil(fraction * order.shape[1]))
    flat = torch.zeros(order.shape, dtype=torch.float32)
    flat.scatter_(1, order[:, :count], 1.0)
    return flat.view(order.shape[0], 1, *shape[-2:])


def normalized_areas(curves: np.ndarray, fractions: Sequence[float], start: float) -> np.ndarray:
    """Per image, the area under ``[start, *curve]`` over ``[0, *fractions]`` (trapezoid), divided by
    the largest fraction: the curve's mean height."""
    heights = np.concatenate([np.full((curves.shape[0], 1), start), curves], axis=1)
    steps = np.diff(np.concatenate([[0.0], fractions]))
    return (((heights[:, 1:] + heights[:, :-1]) / 2) * steps).sum(axis=1) / fractions[-1]


def _paired(a: np.ndarray, b: np.ndarray, settings: FaithfulnessSettings) -> dict[str, float]:
    """Mean per-image difference ``a − b`` (nan images left out) and its bootstrap interval over images
    (the same resamples for every pair of maps)."""
    keep = ~(np.isnan(a) | np.isnan(b))
    differences = (a - b)[keep]
    if differences.size == 0:
        return dict.fromkeys(("mean", "low", "high"), float("nan"))
    rng = np.random.default_rng(settings.seed)
    samples = differences[rng.integers(0, differences.size, (settings.resamples, differences.size))].mean(1)
    low, high = interval(samples, settings.level) if settings.resamples else (math.nan, math.nan)
    return {"mean": float(differences.mean()), "low": low, "high": high}


def replacement_images(engine: MapEngine, images: Tensor, settings: FaithfulnessSettings) -> Tensor:
    """What deleted pixels become: the model's reconstruction of each image, or its Gaussian blur."""
    if settings.replace == "blur":
        return gaussian_smooth(images, settings.blur_sigma)

    def reconstruct(batch: Tensor) -> Tensor:
        with torch.autocast(batch.device.type, enabled=False):
            return engine.reconstruct(batch.float())[1]

    return _batched(engine, images, settings.batch_size, reconstruct)


def deletion_insertion(
    engine: MapEngine, images: Tensor, replacement: Tensor, orders: Mapping[str, Tensor],
    settings: FaithfulnessSettings,
) -> dict[str, dict[str, np.ndarray]]:
    """Per pixel order: the normalised deletion and insertion curves (N×K, K fractions; nan rows for
    images whose score does not drop when every pixel is replaced) and their per-image areas. A curve
    can leave [0, 1] where a partial edit moves the score beyond the original or the replaced image's."""
    full = image_score(engine, images, settings.batch_size)
    replaced = image_score(engine, replacement, settings.batch_size)
    span = full - replaced
    # Deletion is defined where replacing every pixel lowers the score; other images are left out (nan).
    span = torch.where(span > 1e-9 * full.abs().clamp(min=1.0), span, torch.full_like(span, math.nan))
    results = {}
    for name, order in orders.items():
        edited = []
        for fraction in settings.fractions:
            mask = top_mask(order, fraction, images.shape)
            edited += [images * (1 - mask) + replacement * mask, replacement * (1 - mask) + images * mask]
        scores = image_score(engine, torch.cat(edited), settings.batch_size).view(len(edited), -1)
        normalised = ((scores - replaced) / span).T.numpy().astype(np.float64)  # N × 2K
        deletion, insertion = normalised[:, 0::2], normalised[:, 1::2]
        results[name] = {
            "deletion_curve": deletion, "insertion_curve": insertion,
            "deletion": normalized_areas(deletion, settings.fractions, 1.0),
            "insertion": normalized_areas(insertion, settings.fractions, 0.0),
        }
    return results


def cascade_layers(model: nn.Module) -> list[nn.Module]:
    """The model's parameterised layers that can re-initialise themselves, in registration order."""
    return [
        module for module in model.modules()
        if callable(getattr(module, "reset_parameters", None))
        and any(True for _ in module.parameters(recurse=False))
    ]


def randomized_maps(
    engine: MapEngine, images: Tensor, specs: Sequence[MapSpec], settings: FaithfulnessSettings
) -> tuple[list[int], list[list[Tensor]]]:
    """(depths, maps): for each cascade depth (number of layers re-initialised, from the output end),
    the maps of ``specs`` with that partly random copy of the model. The trained model is untouched."""
    clone = copy.copy(engine)
    clone.model = copy.deepcopy(engine.model)
    layers = cascade_layers(clone.model)
    depths = list(dict.fromkeys(max(1, math.ceil(f * len(layers))) for f in settings.cascade))
    depths = depths if layers else []
    devices = [engine.device] if engine.device.type == "cuda" else []
    maps, done = [], 0
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(settings.seed)
        for depth in depths:
            for module in reversed(layers[len(layers) - depth : len(layers) - done]):
                module.reset_parameters()
            done = depth
            maps.append(render(clone, images, specs, settings.batch_size))
    return depths, maps


def spearman_per_image(a: Tensor, b: Tensor) -> np.ndarray:
    """Spearman rank correlation of the pixels of each pair of maps (ties get their mean rank; nan where
    a map is constant)."""
    from scipy.stats import rankdata

    ranks_a = rankdata(a.flatten(1).numpy(), axis=1)
    ranks_b = rankdata(b.flatten(1).numpy(), axis=1)
    ranks_a -= ranks_a.mean(1, keepdims=True)
    ranks_b -= ranks_b.mean(1, keepdims=True)
    denominator = np.sqrt((ranks_a**2).sum(1) * (ranks_b**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ranks_a * ranks_b).sum(1) / denominator, np.nan)


def ssim_per_image(a: Tensor, b: Tensor) -> np.ndarray:
    """SSIM of each pair of maps after min-max normalising each map to [0, 1] (a constant map is 0)."""

    def normalised(maps: Tensor) -> Tensor:
        flat = maps.flatten(1).double()
        low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
        spread = (high - low).clamp(min=1e-300)
        scaled = torch.where(high > low, (flat - low) / spread, torch.zeros_like(flat))
        return scaled.view_as(maps).float()

    values = structural_similarity_index_measure(
        normalised(a), normalised(b), data_range=1.0, reduction="none"
    )
    return values.double().numpy()


def randomization_summary(
    trained: Tensor, randomized: Sequence[Tensor], depths: Sequence[int], n_layers: int,
    settings: FaithfulnessSettings,
) -> dict[str, Any]:
    """One map's model-randomization entry: mean Spearman and SSIM to the trained model's map at each
    depth and the verdict (``model-independent``, ``unchanged`` or ``changes``)."""
    spearman = [_nanmean(spearman_per_image(trained, maps)) for maps in randomized]
    ssim = [_nanmean(ssim_per_image(trained, maps)) for maps in randomized]
    if all(torch.equal(trained, maps) for maps in randomized):
        verdict = "model-independent"
    elif spearman and spearman[-1] >= settings.unchanged_spearman:
        verdict = "unchanged"
    else:
        verdict = "changes"
    return {
        "layers_randomized": list(depths), "layers": n_layers, "spearman": spearman, "ssim": ssim,
        "verdict": verdict,
    }


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite values (nan when there are none)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def check_maps(
    engine: MapEngine, images: Tensor, maps: Mapping[str, MapSpec], settings: FaithfulnessSettings
) -> dict[str, Any]:
    """The ``faithfulness`` block of metrics.json for ``maps`` (name -> spec; ``residual_l2`` among
    them gives the comparisons with the residual) on ``images`` (N×C×H×W, anomalous test images)."""
    names, specs = list(maps), list(maps.values())
    trained = render(engine, images, specs, settings.batch_size)
    orders = {name: pixel_order(values) for name, values in zip(names, trained, strict=True)}
    generator = torch.Generator().manual_seed(settings.seed)
    orders["random"] = torch.argsort(torch.rand(trained[0].flatten(1).shape, generator=generator), dim=1)
    replacement = replacement_images(engine, images, settings)
    curves = deletion_insertion(engine, images, replacement, orders, settings)
    depths, randomized = randomized_maps(engine, images, specs, settings) if settings.cascade else ([], [])
    n_layers = len(cascade_layers(engine.model))
    entries = {}
    for index, (name, spec) in enumerate(zip(names, specs, strict=True)):
        entry = {"label": spec.label, **_curve_summary(curves[name])}
        for other in ("random", "residual_l2"):
            if other in curves and other != name:
                for kind in ("deletion", "insertion"):
                    entry[f"{kind}_vs_{other}"] = _paired(curves[name][kind], curves[other][kind], settings)
        if depths:
            entry["randomization"] = randomization_summary(
                trained[index], [maps[index] for maps in randomized], depths, n_layers, settings
            )
        entries[name] = entry
    return _nan_as_none({
        "n_images": len(images),
        "replaced_by": "the model's reconstruction of the image" if settings.replace == "reconstruction"
        else f"a Gaussian blur of the image (sigma {settings.blur_sigma} px)",
        "score": engine.score_spec.label,
        "maps": entries,
        "random": _curve_summary(curves["random"]),
        "settings": settings.to_dict(),
    })


def _nan_as_none(value: Any) -> Any:
    """``value`` with every NaN (a value with nothing to average: no image scored, a constant map) as
    None, so metrics.json says null and two runs of the same job compare equal."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_as_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_as_none(item) for item in value]
    return value


def _curve_summary(curves: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Mean areas and mean curves over the images (nan images left out)."""
    return {
        "deletion_auc": _nanmean(curves["deletion"]),
        "insertion_auc": _nanmean(curves["insertion"]),
        "deletion_curve": [_nanmean(column) for column in curves["deletion_curve"].T],
        "insertion_curve": [_nanmean(column) for column in curves["insertion_curve"].T],
        "n_images_scored": int(np.isfinite(curves["deletion"]).sum()),
    }
