"""Reading a run's checkpoint without Lightning: the file checked and loaded with ``weights_only=True``
(no pickled code runs; an unreadable file is explained in the user's terms), its hyper-parameters with
overrides applied, and thresholds padded for controls registered after training.
:meth:`anomaly_attn.maps.engine.MapEngine.from_checkpoint` builds a map engine from what these read.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anomaly_attn.config.extensions import import_extensions


def check_checkpoint_path(ckpt_path: str | Path | None) -> Path:
    """The checkpoint file, or an error that says what to pass."""
    if ckpt_path in (None, "", "???"):
        raise ValueError(
            "ckpt_path is required, e.g. ckpt_path=outputs/quickstart/multirun/<job>/checkpoints/model.ckpt"
        )
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; pass a run's checkpoints/model.ckpt (or best.ckpt/last.ckpt)."
        )
    return path


def load_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """A checkpoint's content, loaded on the CPU with ``weights_only=True`` (no pickled code runs)."""
    path = check_checkpoint_path(ckpt_path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise ValueError(
            f"checkpoint {path} {_why_unreadable(path)}; pass a run's checkpoints/model.ckpt (or "
            "best.ckpt/last.ckpt)."
        ) from error


def _why_unreadable(path: Path) -> str:
    """Why torch could not load ``path``, in the user's terms (torch's own text advises turning the
    weights-only loading off, which would run code stored in the file: never an option here)."""
    with path.open("rb") as file:
        is_zip = file.read(4) == b"PK\x03\x04"
    if not is_zip:
        return "is not a checkpoint (torch saves checkpoints as zip archives; this file is not one)"
    if not zipfile.is_zipfile(path):
        return "is truncated or corrupted (its zip archive is incomplete: an interrupted copy?)"
    return (
        "holds objects other than tensors and plain values, so it was not written by anomaly_attn.train "
        "and is not loaded (loading it would run code stored in the file)"
    )


def hyper_parameters(state: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """The run's hyper-parameters in a loaded checkpoint ``state``, or an error naming ``path``."""
    if "hyper_parameters" not in state or "model" not in state["hyper_parameters"]:
        raise ValueError(
            f"{path} holds no AnomalyModule hyper-parameters; pass a checkpoint written by "
            "anomaly_attn.train (checkpoints/model.ckpt, best.ckpt or last.ckpt)."
        )
    return dict(state["hyper_parameters"])


def read_hyper_parameters(ckpt_path: str | Path) -> dict[str, Any]:
    """The hyper-parameters stored in a checkpoint (loaded with ``weights_only=True``)."""
    return hyper_parameters(load_checkpoint(ckpt_path), ckpt_path)


def read_checkpoint(
    ckpt_path: str | Path, overrides: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint's content and its hyper-parameters with ``overrides`` applied. The maps both name
    may come from users' modules (their yamls' `_module_`): both are imported, the overrides' attention
    replacing the training one's."""
    state = load_checkpoint(ckpt_path)
    hparams = hyper_parameters(state, ckpt_path)
    import_extensions(hparams, "checkpoint")
    import_extensions(dict(overrides or {}), "config")
    return state, {**hparams, **(overrides or {})}


def pad_thresholds(weights: dict[str, Tensor], count: int) -> None:
    """A control map registered after a checkpoint was trained (a user's `_module_`) has no threshold
    in it yet: nan, as before calibration (evaluate calibrates again on validation data)."""
    for key in ("pixel_thresholds", "image_thresholds"):
        saved = weights.get(key)
        if saved is not None and len(saved) < count:
            weights[key] = torch.cat([saved, saved.new_full((count - len(saved),), float("nan"))])
