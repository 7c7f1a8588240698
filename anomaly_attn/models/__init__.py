"""Reconstruction backbones and their registry.

Every module of this package is imported here (``pkgutil``), so a backbone registered with
``@register_model`` in a new module is available to ``create_model`` without editing any list.
"""

import importlib
import pkgutil

from anomaly_attn.models.base import (
    ReconstructionModel,
    ReconstructionOutput,
    layer_shapes,
    resolve_layer,
)
from anomaly_attn.models.registry import accepted_kwargs, create_model, list_models, register_model

for _module_info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module_info.name}")

__all__ = [
    "ReconstructionModel",
    "ReconstructionOutput",
    "accepted_kwargs",
    "create_model",
    "layer_shapes",
    "list_models",
    "register_model",
    "resolve_layer",
]
