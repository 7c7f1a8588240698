"""Random states in Lightning checkpoints, so a resumed run continues the same random streams.

Lightning's ``fit(ckpt_path=...)`` restores weights, optimizer, LR schedulers, epoch and loop
progress, but not the Python, NumPy and torch random generators.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch


def _numpy_state_to_tensors(state: tuple) -> dict[str, Any]:
    name, keys, position, has_gauss, cached_gaussian = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "position": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _numpy_state_from_tensors(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["name"], keys, state["position"], state["has_gauss"], state["cached_gaussian"]


class RngStateCheckpoint(pl.Callback):
    """Save and restore the Python, NumPy and torch random states with every checkpoint.

    Stored as tensors and plain Python values, so the checkpoint still loads with
    ``weights_only=True``. The state is restored when Lightning restores callbacks, before the
    resumed epoch starts.
    """

    def state_dict(self) -> dict[str, Any]:
        state = {
            "python": list(random.getstate()),
            "numpy": _numpy_state_to_tensors(np.random.get_state()),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state(_numpy_state_from_tensors(state_dict["numpy"]))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            cuda_states = state_dict["cuda"]
            if len(cuda_states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda_states)
