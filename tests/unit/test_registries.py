"""Every name table is a ``common.registries.Registry``: one rule for a taken name, sorted ``list_*``
functions, and one unknown-name error (the closest names, then all of them)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from anomaly_attn.classical.detectors import DETECTORS, create_detector, list_detectors, register_detector
from anomaly_attn.common.registries import Registry
from anomaly_attn.data.synthetic import GENERATORS, get_generator, list_generators, register_generator
from anomaly_attn.maps import gradient
from anomaly_attn.maps.controls import CONTROL_MAPS, control_map, list_controls, register_control
from anomaly_attn.models.registry import MODELS, create_model, list_models, register_model
from anomaly_attn.training.losses import (
    ATTENTION_LOSSES,
    RECONSTRUCTION_LOSSES,
    attention_loss,
    list_attention_losses,
    list_losses,
    reconstruction_loss,
    register_attention_loss,
    register_loss,
)


@dataclass(frozen=True)
class Table:
    registry: Registry
    register: Callable[[str], Callable[[Any], Any]]
    """The table's own decorator factory (``register_model``, ``register_variant``, ...)."""
    list_names: Callable[[], list[str]]
    lookup: Callable[[str], Any]
    """The table's public lookup by name (runs the registry's ``get`` first)."""
    taken: str
    typo: str
    closest: str

    def definition(self, name: str) -> Any:
        """What the taken-name rule compares: the entry, or the function an attention variant wraps."""
        entry = self.registry.get(name)
        return getattr(entry, "combine", entry)


TABLES = {
    "models": Table(
        MODELS, register_model, list_models, create_model, taken="conv_ae", typo="conv_aee", closest="conv_ae"
    ),
    "attention variants": Table(
        gradient._VARIANTS,
        gradient.register_variant,
        gradient.list_variants,
        gradient._variant,
        taken="gradcam",
        typo="gradcamm",
        closest="gradcam",
    ),
    "control maps": Table(
        CONTROL_MAPS,
        register_control,
        list_controls,
        lambda name: control_map(name, None, None),
        taken="residual_l2",
        typo="residual_l3",
        closest="residual_l2",
    ),
    "reconstruction losses": Table(
        RECONSTRUCTION_LOSSES,
        register_loss,
        list_losses,
        lambda name: reconstruction_loss(name, None, None),
        taken="mse",
        typo="msee",
        closest="mse",
    ),
    "attention losses": Table(
        ATTENTION_LOSSES,
        register_attention_loss,
        list_attention_losses,
        lambda name: attention_loss(name, None),
        taken="mean_std",
        typo="mean_sdt",
        closest="mean_std",
    ),
    "classical detectors": Table(
        DETECTORS,
        register_detector,
        list_detectors,
        lambda name: create_detector(name, n_train=10),
        taken="knn",
        typo="knnn",
        closest="knn",
    ),
    "synthetic anomaly generators": Table(
        GENERATORS,
        register_generator,
        list_generators,
        get_generator,
        taken="perlin",
        typo="perlinn",
        closest="perlin",
    ),
}
tables = pytest.mark.parametrize("table", TABLES.values(), ids=TABLES.keys())


@pytest.fixture(autouse=True)
def restored_registries() -> Iterator[None]:
    """Whatever a test registers is gone afterwards."""
    saved = [(table.registry, table.registry.snapshot()) for table in TABLES.values()]
    yield
    for registry, snapshot in saved:
        registry.restore(snapshot)


def _imposter(existing: Any) -> Any:
    """A different definition of the same kind (a class for the model table, else a function)."""
    if isinstance(existing, type):
        return type("Imposter", (existing,), {})

    def imposter(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("never called")

    return imposter


def _reimported(existing: Any) -> Any:
    """A new object with the module and qualified name of ``existing``: what importing its module again
    (``importlib.reload``, a test deleting it from ``sys.modules``) re-creates."""
    twin = _imposter(existing)
    twin.__module__, twin.__qualname__ = existing.__module__, existing.__qualname__
    return twin


@tables
def test_a_different_definition_under_a_taken_name_is_refused_naming_both(table: Table) -> None:
    existing = table.definition(table.taken)
    message = (
        rf"^{re.escape(table.registry.kind)} '{table.taken}' is already registered by "
        rf"{re.escape(existing.__module__)}\.{re.escape(existing.__qualname__)}; "
        rf"register .*[Ii]mposter under another name$"
    )
    with pytest.raises(ValueError, match=message):
        table.register(table.taken)(_imposter(existing))
    assert table.definition(table.taken) is existing


@tables
def test_the_same_definition_may_register_its_name_again(table: Table) -> None:
    existing = table.definition(table.taken)
    assert table.register(table.taken)(existing) is existing
    assert table.definition(table.taken) is existing
    twin = _reimported(existing)
    assert table.register(table.taken)(twin) is twin
    assert table.definition(table.taken) is twin  # the re-imported object replaces the old one


@tables
def test_a_new_name_is_registered_and_listed_in_order(table: Table) -> None:
    newcomer = _imposter(table.definition(table.taken))
    assert table.register("aaa_newcomer")(newcomer) is newcomer
    assert table.definition("aaa_newcomer") is newcomer
    assert "aaa_newcomer" in table.registry and "aaa_newcomer" in table.list_names()
    assert list(table.registry)[-1] == "aaa_newcomer"  # iteration: registration order


@tables
def test_list_function_is_the_sorted_registry_names(table: Table) -> None:
    names = table.list_names()
    assert names == sorted(names) == table.registry.names() == sorted(table.registry)
    assert names == sorted(name for name, _ in table.registry.items())
    assert len(table.registry) == len(names) and table.taken in names


@tables
def test_an_unknown_name_gets_the_closest_names_and_every_valid_one(table: Table) -> None:
    valid = ", ".join(repr(name) for name in table.list_names())
    expected = f"unknown {table.registry.kind} {table.typo!r}. Did you mean {table.closest!r}"
    with pytest.raises(ValueError) as error:
        table.lookup(table.typo)
    assert str(error.value).startswith(expected)
    assert str(error.value).endswith(f" Valid: {valid}.")
    with pytest.raises(ValueError, match=re.escape(f"Valid: {valid}.")):
        table.registry[table.typo]
    assert table.typo not in table.registry


def test_control_maps_keep_their_registration_order_for_metrics_json() -> None:
    assert list(CONTROL_MAPS)[:4] == ["residual_l2", "residual_ssim", "residual_highpass", "image_highpass"]


def test_alpha_variants_are_the_sorted_variants_built_from_alpha() -> None:
    alpha = gradient.alpha_variants()
    assert alpha == sorted(name for name, variant in gradient._VARIANTS.items() if variant.uses_alpha)
    assert {"expvae", "gradcam", "gradcam_abs"} <= set(alpha) and "layercam" not in alpha


def test_a_registry_without_a_close_name_gives_no_hint() -> None:
    registry: Registry[int] = Registry("number")
    assert registry.register("one", 1) == 1

    @registry.register("two")
    def two() -> int:
        return 2

    assert registry["one"] == 1 and registry.get("two") is two
    assert registry.items() == [("one", 1), ("two", two)]
    with pytest.raises(ValueError, match=r"^unknown number 'zebra'\. Valid: 'one', 'two'\.$"):
        registry.get("zebra")
    with pytest.raises(ValueError, match=r"^number 'one' is already registered by 1; register 2 under"):
        registry.register("one", 2)
    snapshot = registry.snapshot()
    registry.register("three", 3)
    registry.restore(snapshot)
    assert registry.names() == ["one", "two"]
