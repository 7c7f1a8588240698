"""Name → backbone registry: ``@register_model("name")`` on a class, ``create_model("name", **kwargs)``.

A new backbone is one new module in this package with a decorated class; ``models/__init__.py``
imports every module of the package, so no list needs editing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from anomaly_attn.common.registries import Registry
from anomaly_attn.models.base import ReconstructionModel

ModelClass = TypeVar("ModelClass", bound=type[ReconstructionModel])

MODELS: Registry[type[ReconstructionModel]] = Registry("model")
"""name -> backbone class, filled by ``@register_model``."""


def register_model(name: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator that makes a backbone available to ``create_model(name, ...)``."""

    def register(model_class: ModelClass) -> ModelClass:
        MODELS.register(name, model_class)
        model_class.registry_name = name
        return model_class

    return register


def list_models() -> list[str]:
    """Names of all registered backbones, sorted."""
    return MODELS.names()


def accepted_kwargs(name: str) -> list[str]:
    """Keyword arguments the backbone ``name`` accepts (its constructor's parameters)."""
    parameters = inspect.signature(_model_class(name).__init__).parameters
    return [parameter for parameter in parameters if parameter != "self"]


def create_model(name: str, **kwargs: Any) -> ReconstructionModel:
    """Instantiate the registered backbone ``name`` with ``kwargs``.

    Raises ValueError for an unknown name (listing the registered ones) and TypeError for unknown
    keyword arguments (naming them and the accepted ones).
    """
    accepted = accepted_kwargs(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"model {name!r} got unknown keyword argument(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted)}"
        )
    return MODELS.get(name)(**kwargs)


def _model_class(name: str) -> type[ReconstructionModel]:
    return MODELS.get(name)


def model_config(cfg: Any) -> dict[str, Any]:
    """The ``model`` node of a job's config as a plain dict (``name`` plus the backbone's arguments)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.model, resolve=True)  # type: ignore[return-value]


def model_from_config(model: Mapping[str, Any]) -> ReconstructionModel:
    """The backbone a ``model`` config names: ``name`` plus the backbone's arguments (a job's config, a
    checkpoint's hyper-parameters)."""
    kwargs = dict(model)
    return create_model(kwargs.pop("name"), **kwargs)


def build_backbone(cfg: Any) -> ReconstructionModel:
    """The backbone a job's config names (``model.name`` and its arguments)."""
    return model_from_config(model_config(cfg))
