"""What a run directory's ``metrics.json`` holds, field by field: the one definition of a run's record.

A job (training, re-evaluation of a checkpoint, a classical detector) fills a :class:`RunRecord` and
writes it with :func:`anomaly_attn.run.store.write_record`; reports read it back with
:func:`anomaly_attn.run.store.read_record`, which translates the key names of older runs in one place
(:func:`translate_old_keys`). Plain Python: no torch, no Lightning.

The JSON form (:meth:`RunRecord.to_json`) is, in this order:

- the selected map's **test** metrics at the top level (``image_auroc``, ``image_f1_max``,
  ``pixel_auroc``, ``pixel_aupro``, ``pixel_f1_max``, ``pixel_iou``, ``per_defect``; classical detectors
  have image metrics only);
- ``controls``: the same metrics of every control map (``residual_l2``, ...), each with its
  ``validation`` block when the run had synthetic validation data;
- ``validation``: the selected map's scores on the synthetic validation set (never test data);
- ``selection``: what selection on validation data chose, and why (``maps.selection``);
- ``intervals``: bootstrap intervals over test images of the selected map's and every control's test
  metrics, and the paired selected − residual_l2 differences (``metrics.interval_inputs``);
- ``faithfulness``: deletion/insertion and model-randomization checks of the selected map, the best map
  of each attention variant, ``residual_l2`` and ``image_highpass`` on a seeded subset of anomalous test
  images (``maps.faithfulness``; analysis only);
- the identity of the run (``dataset``, ``category``, ``model``, ``layer``, ``variant``, ``selected_map``,
  ``image_score``, ``loss``, ``seed``, ``experiment``);
- ``thresholds``, ``checkpoint``, the image counts, training facts (``epochs``, ``best_epoch``, ...);
- ``provenance``: the config and code digests (``common.fingerprint``) and ``timing``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The selected map's name among a run's maps: the map engine's key, the ``score_selected`` column of
# per_image_scores.csv, and the map the top-level test metrics describe.
SELECTED = "selected"

# The test metrics of one map, in the order metrics.json lists them.
MAP_METRICS = ("image_auroc", "image_f1_max", "pixel_auroc", "pixel_aupro", "pixel_f1_max", "pixel_iou")

# Identity fields, in metrics.json order. ``variant``: the selected map's kind, a gradient-attention
# variant (``gradcam``) or a control map's name (``residual_ssim``).
IDENTITY_FIELDS = (
    "dataset", "category", "model", "layer", "variant", "selected_map", "image_score", "loss", "seed",
    "experiment",
)

# Renamed metrics.json keys: old name -> today's (runs written by older versions still report).
RENAMED_KEYS = {"baselines": "controls", "attention": "variant"}
# Renamed attention variants and experiment presets: old name -> today's.
RENAMED_VARIANTS = {"seed": "mean_abs_cam"}
RENAMED_EXPERIMENTS = {"seed_repro": "research_schedule"}


@dataclass
class RunRecord:
    """One run's results (the content of its metrics.json). ``test``: the selected map's test metrics;
    ``controls``: each control map's; ``intervals``: their bootstrap intervals; ``faithfulness``: the
    deletion/insertion and randomization checks of the maps; ``identity``: the
    IDENTITY_FIELDS that apply; ``facts``: counts,
    thresholds, checkpoint and training facts; ``extra``: fields of one kind of job only (a classical
    detector's settings)."""

    test: dict[str, Any]
    identity: dict[str, Any]
    controls: dict[str, dict[str, Any]] = field(default_factory=dict)
    validation: dict[str, float] | None = None
    selection: dict[str, Any] | None = None
    intervals: dict[str, Any] | None = None
    faithfulness: dict[str, Any] | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The metrics.json content."""
        data: dict[str, Any] = dict(self.test)
        if self.controls:
            data["controls"] = self.controls
        if self.validation is not None:
            data["validation"] = self.validation
        if self.selection is not None:
            data["selection"] = self.selection
        if self.intervals is not None:
            data["intervals"] = self.intervals
        if self.faithfulness is not None:
            data["faithfulness"] = self.faithfulness
        data.update(self.identity)
        data.update(self.extra)
        data.update(self.facts)
        data["provenance"] = self.provenance
        data["timing"] = self.timing
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """The record of a metrics.json (older key names translated)."""
        data = translate_old_keys(data)
        known = {"controls", "validation", "selection", "intervals", "faithfulness", "provenance", "timing"}
        test = {key: value for key, value in data.items() if key in (*MAP_METRICS, "per_defect")}
        identity = {key: data[key] for key in IDENTITY_FIELDS if key in data}
        rest = {
            key: value for key, value in data.items()
            if key not in known and key not in test and key not in identity
        }
        extra_keys = ("features", "detector")
        return cls(
            test=test,
            identity=identity,
            controls=data.get("controls") or {},
            validation=data.get("validation"),
            selection=data.get("selection"),
            intervals=data.get("intervals"),
            faithfulness=data.get("faithfulness"),
            facts={key: value for key, value in rest.items() if key not in extra_keys},
            extra={key: value for key, value in rest.items() if key in extra_keys},
            provenance=data.get("provenance") or {},
            timing=data.get("timing") or {},
        )


def translate_old_keys(metrics: dict[str, Any]) -> dict[str, Any]:
    """A metrics.json written by an older version in today's names: control maps were once under
    ``baselines``; the selected map's kind was ``attention``; classical detectors were ``baseline:NAME``
    models with their settings under ``baseline``; the variant ``seed`` is ``mean_abs_cam``."""
    if not isinstance(metrics, dict):
        return metrics
    translated = {}
    for key, value in metrics.items():
        new = RENAMED_KEYS.get(key, key)
        if new != key and new in metrics:
            new = key  # both present: keep the run's own
        translated[new] = value
    model = translated.get("model")
    if isinstance(model, str) and model.startswith("baseline:"):
        translated["model"] = "classical:" + model.removeprefix("baseline:")
        if "baseline" in translated and "detector" not in translated:
            translated = {("detector" if k == "baseline" else k): v for k, v in translated.items()}
    if translated.get("variant") in RENAMED_VARIANTS:
        translated["variant"] = RENAMED_VARIANTS[translated["variant"]]
    if translated.get("experiment") in RENAMED_EXPERIMENTS:
        translated["experiment"] = RENAMED_EXPERIMENTS[translated["experiment"]]
    return translated


def translate_old_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config.yaml written by an older version in today's names: the config group that chooses
    the map was ``attention`` (now ``map``), the variant ``seed`` is ``mean_abs_cam`` (there and in
    ``selection.variants``)."""
    translated = dict(config)
    if "attention" in translated and "map" not in translated:
        translated = {("map" if key == "attention" else key): value for key, value in translated.items()}
    group = translated.get("map")
    if isinstance(group, dict) and group.get("variant") in RENAMED_VARIANTS:
        translated["map"] = {**group, "variant": RENAMED_VARIANTS[group["variant"]]}
    selection = translated.get("selection")
    if isinstance(selection, dict) and isinstance(selection.get("variants"), list):
        variants = [RENAMED_VARIANTS.get(v, v) if isinstance(v, str) else v for v in selection["variants"]]
        translated["selection"] = {**selection, "variants": variants}
    return translated
