"""Restoration training: reconstruct the clean image from a synthetically corrupted input.

A plain autoencoder trained on normal images learns to copy; a defect it has never seen is then copied
too and leaves no residual. With ``restoration.probability`` > 0 each training image is, with that
probability, given one synthetic anomaly from the generator registry (``data.synthetic``) before it enters
the network, and the loss compares the output with the CLEAN image, so the model is taught to remove
what does not belong (DRAEM's reconstructive sub-network, Zavrtanik et al., ICCV 2021).

Honesty rules (docs/METHOD.md, "Validation with synthetic anomalies"): the map and checkpoint are chosen
on synthetic validation anomalies, so restoration must not be trained on the very anomalies it is then
judged on. ``generators: auto`` uses the registered generators that the validation set does not use; when
validation uses them all, the run says so (``shares_validation`` in metrics.json and a warning) instead of
silently flattering itself. The corruptions have their own seed stream: ``(run seed, restoration.seed,
global step)``, so a resumed run draws the same ones and they never share draws with the validation set.

Off by default (probability 0): it changes the model, and defaults change only where validation says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anomaly_attn.data.synthetic import list_generators
from anomaly_attn.data.synthetic_sources import TextureSources
from anomaly_attn.data.synthetic_validation import apply_generator, checked_generators

log = logging.getLogger(__name__)

DEFAULT_SOURCES = ("skimage", "shifted_self")
"""Foreign textures of restoration's perlin: the batch's own images are not kept between steps."""


@dataclass
class Restoration:
    """Corrupts training batches (see the module docstring); ``None`` where ``probability`` is 0."""

    probability: float
    generators: list[str]
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
    shares_validation: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.probability <= 1.0:
            raise ValueError(
                f"restoration.probability={self.probability}: give a share of the training images in "
                "(0, 1], or 0 to train on clean inputs"
            )
        self.options = checked_generators(self.generators, self.options)
        self._sources = {
            name: TextureSources(kinds=self.options.get(name, {}).get("sources", DEFAULT_SOURCES))
            for name in self.generators
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], validation_generators: Sequence[str], run_seed: int
                    ) -> Restoration | None:
        """The ``restoration`` config node, or ``None`` when it is off (probability 0)."""
        probability = float(cfg.get("probability", 0.0) or 0.0)
        if probability == 0.0:
            return None
        used = [str(name) for name in validation_generators]
        generators = cfg.get("generators", "auto")
        if generators == "auto" or generators is None:
            generators = [name for name in list_generators() if name not in used] or list_generators()
        generators = [str(name) for name in ([generators] if isinstance(generators, str) else generators)]
        unknown = [name for name in generators if name not in list_generators()]
        if unknown or not generators:
            raise ValueError(f"restoration.generators={generators}: unknown or empty; valid: auto or a list "
                             f"of {', '.join(list_generators())}")
        shared = sorted(set(generators) & set(used))
        if shared:
            log.warning(
                "restoration trains on the generator(s) %s that the synthetic validation set also uses: "
                "the validation objective may flatter it (set restoration.generators or validation=...)",
                ", ".join(shared),
            )
        options = {str(k): dict(v or {}) for k, v in (cfg.get("options") or {}).items()}
        seed = int(np.random.SeedSequence([int(run_seed), int(cfg.get("seed", 1))]).generate_state(1)[0])
        return cls(probability, generators, options, seed, shares_validation=bool(shared))

    def record(self) -> dict[str, Any]:
        """What metrics.json says about it."""
        return {"probability": self.probability, "generators": list(self.generators),
                "shares_validation": self.shares_validation}

    def corrupt(self, images: Tensor, step: int) -> Tensor:
        """A copy of ``images`` (N×C×H×W in [0, 1]) where each image is, with ``probability``, replaced by
        one synthetic anomaly of a generator drawn at random; the same ``step`` gives the same batch."""
        rng = np.random.default_rng([self.seed, int(step)])
        chosen = np.flatnonzero(rng.random(len(images)) < self.probability)
        if not len(chosen):
            return images
        pixels = images.detach().float().clamp(0.0, 1.0).permute(0, 2, 3, 1).cpu().numpy()
        corrupted = images.detach().clone()
        for index in chosen:
            name = self.generators[int(rng.integers(len(self.generators)))]
            kwargs = {k: v for k, v in self.options.get(name, {}).items() if k != "sources"}
            image, _ = apply_generator(name, pixels[index], rng, self._sources[name], kwargs)
            corrupted[index] = torch.from_numpy(image).permute(2, 0, 1).to(corrupted.device, corrupted.dtype)
        return corrupted
