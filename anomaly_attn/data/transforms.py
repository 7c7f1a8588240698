"""Training augmentations, built with albumentations and applied to image and mask together.

Augmentation is off by default: a flip or rotation can turn a normal object into a defective one (a
mirrored transistor, a rotated screw), so ``augment=True`` only means something where the dataset knows a
safe default (flips of homogeneous textures). Anything else is spelled out in the config as
``{TransformName: {kwarg: value}}``, e.g. ``augment: {HorizontalFlip: {p: 0.5}, Rotate: {limit: 5}}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import albumentations as A
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

TEXTURE_FLIPS: dict[str, dict[str, Any]] = {"HorizontalFlip": {"p": 0.5}, "VerticalFlip": {"p": 0.5}}
"""Safe default for homogeneous textures: mirroring a texture gives another normal texture."""


def build_augmentation(spec: Mapping[str, Mapping[str, Any] | None]) -> A.Compose:
    """An albumentations pipeline from ``{TransformName: kwargs}`` (in order), for image and mask.

    Raises:
        ValueError: a name that is not an albumentations transform.
    """
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    transforms = []
    for name, kwargs in spec.items():
        transform_class = getattr(A, name, None)
        if not isinstance(transform_class, type) or not issubclass(transform_class, A.BasicTransform):
            raise ValueError(
                f"augmentation '{name}' is not an albumentations transform "
                f"(examples: HorizontalFlip, VerticalFlip, RandomRotate90, Rotate, ColorJitter)"
            )
        transforms.append(transform_class(**(kwargs or {})))
    return A.Compose(transforms)


def resolve_augmentation(
    augment: bool | Mapping[str, Any] | None, default: Mapping[str, Any] | None, what: str
) -> A.Compose | None:
    """The training augmentation for a config value ``augment`` given the dataset's safe ``default``.

    ``False``/``None`` -> none; ``True`` -> ``default`` (a warning and none where the dataset has no safe
    default for ``what``, e.g. an object category); a mapping -> exactly that pipeline.
    """
    if augment is None or augment is False:
        return None
    if augment is True:
        if default is None:
            log.warning(
                "augment=true but %s has no safe default augmentation (a flip or rotation could create a "
                "defect); training without augmentation. Give an explicit spec, e.g. "
                "augment={HorizontalFlip: {p: 0.5}}, if you know it is safe.",
                what,
            )
            return None
        return build_augmentation(default)
    if isinstance(augment, Mapping):
        return build_augmentation(augment)
    raise ValueError(f"augment must be a bool or a mapping {{TransformName: kwargs}}, got {augment!r}")
