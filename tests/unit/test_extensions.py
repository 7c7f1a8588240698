"""Registries users extend with one module plus one yaml: a control map, a gradient variant, a loss, a
classical detector, a dataset and a synthetic-anomaly generator, each from tests/extensions/ (a module)
and tests/extensions/conf/ (a user config dir), with nothing in anomaly_attn edited."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from anomaly_attn.classical.detectors import DETECTORS
from anomaly_attn.config.extensions import import_extensions
from anomaly_attn.config.safety import UnsafeConfigError, check_config, extension_modules
from anomaly_attn.data.synthetic import GENERATORS
from anomaly_attn.maps import gradient
from anomaly_attn.maps.controls import CONTROL_MAPS
from anomaly_attn.training.losses import RECONSTRUCTION_LOSSES
from tests.conftest import run_cli

EXTENSIONS = Path(__file__).resolve().parents[1] / "extensions"
USER_CONF = EXTENSIONS / "conf"
TRUSTED = "tests.extensions."


@pytest.fixture
def clean_registries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registries and imported dummy modules as they were: the dummies never leak into other tests."""
    registries = [CONTROL_MAPS, gradient._VARIANTS, RECONSTRUCTION_LOSSES, DETECTORS, GENERATORS]
    saved = [registry.snapshot() for registry in registries]
    monkeypatch.setenv("ANOMALY_ATTN_TRUSTED_TARGETS", TRUSTED)
    yield
    for registry, before in zip(registries, saved, strict=True):
        registry.restore(before)
    for name in [name for name in sys.modules if name.startswith(TRUSTED)]:
        del sys.modules[name]


def user_yaml(group: str, name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(USER_CONF / group / f"{name}.yaml"))


def test_each_yaml_imports_its_module_which_registers_the_extension(clean_registries: None) -> None:
    cases = [
        ("map", "dummy_abs_residual", lambda: "dummy_abs_residual" in CONTROL_MAPS),
        ("map", "dummy_act_grad", lambda: "dummy_act_grad" in gradient.list_variants()),
        ("loss", "dummy_huber", lambda: "dummy_huber" in RECONSTRUCTION_LOSSES),
        ("detector", "dummy_mean_distance", lambda: "dummy_mean_distance" in DETECTORS),
        ("validation", "dummy_inverted_square", lambda: "dummy_inverted_square" in GENERATORS),
    ]
    for group, name, registered in cases:
        assert not registered(), name
        cfg = {group: user_yaml(group, name)}
        check_config(cfg)
        assert import_extensions(cfg) == [cfg[group]["_module_"]]
        assert registered(), f"{group}/{name}.yaml did not register {name}"


def test_a_module_outside_the_trusted_prefixes_is_refused_before_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANOMALY_ATTN_TRUSTED_TARGETS", raising=False)
    cfg = {"loss": user_yaml("loss", "dummy_huber")}
    with pytest.raises(UnsafeConfigError, match=r"config\.loss\._module_.*ANOMALY_ATTN_TRUSTED_TARGETS"):
        check_config(cfg)
    with pytest.raises(UnsafeConfigError, match="ANOMALY_ATTN_TRUSTED_TARGETS"):
        import_extensions(cfg)
    assert "tests.extensions.dummy_loss" not in sys.modules
    # Trusting torch. does not let a config import torch.hub (the same deny list as _target_).
    monkeypatch.setenv("ANOMALY_ATTN_TRUSTED_TARGETS", "torch.")
    with pytest.raises(UnsafeConfigError, match="loads code"):
        import_extensions({"map": {"_module_": "torch.hub"}})
    with pytest.raises(ValueError, match="dotted module path"):
        extension_modules({"map": {"_module_": ""}})


def test_an_unimportable_module_names_its_key_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMALY_ATTN_TRUSTED_TARGETS", TRUSTED)
    expected = r"config\.validation\._module_='tests\.extensions\.nope'.*PYTHONPATH"
    with pytest.raises(ImportError, match=expected):
        import_extensions({"validation": {"_module_": "tests.extensions.nope"}})


@pytest.mark.slow
def test_dummy_extensions_run_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train (dataset, loss, gradient variant, generator), evaluate (control map as the configured map)
    and the classical-detector CLI, each with the user's yamls and modules only."""
    monkeypatch.setenv("ANOMALY_ATTN_CONFIG_DIR", str(USER_CONF))
    monkeypatch.setenv("ANOMALY_ATTN_TRUSTED_TARGETS", TRUSTED)
    monkeypatch.setenv("ANOMALY_ATTN_OUTPUT_DIR", str(tmp_path / "outputs"))
    data = [
        "dataset=grass_only", "dataset.image_size=64", "dataset.crop_size=32", "dataset.n_train=40",
        "dataset.n_test_good=4", "dataset.n_test_per_defect=2",
    ]
    train = run_cli(
        [*data, "dataset.batch_size=16", "dataset.val_fraction=0.25", "trainer.max_epochs=1", "logger=csv",
         "visualization.max_overlays=0", "loss=dummy_huber", "map=dummy_act_grad",
         "validation=dummy_inverted_square", "selection.map=fixed", "threads=1",
         f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["dataset"], metrics["category"]) == ("grass_only", "grass")
    assert (metrics["loss"], metrics["variant"]) == ("dummy_huber", "dummy_act_grad")
    assert 0.0 <= metrics["pixel_auroc"] <= 1.0 and 0.0 <= metrics["validation"]["pixel_auroc"] <= 1.0
    assert (tmp_path / "run" / "figures" / "validation_samples.png").stat().st_size > 1000
    assert "dummy_abs_residual" not in metrics["controls"]  # its module was never named

    evaluate = run_cli(
        # selection.map=auto: the command line's attention (unsmoothed) is kept fixed, the rest chosen on
        # validation data.
        [f"ckpt_path={tmp_path}/run/checkpoints/model.ckpt", "map=dummy_abs_residual",
         "map.smoothing_sigma=0", "selection.map=auto", "logger=csv", f"hydra.run.dir={tmp_path}/eval"],
        cwd=tmp_path, module="anomaly_attn.evaluate",
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    rescored = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # The control map is the configured map and is reported among the controls, with the same numbers.
    assert rescored["variant"] == "dummy_abs_residual"
    assert rescored["pixel_auroc"] == rescored["controls"]["dummy_abs_residual"]["pixel_auroc"]
    assert rescored["controls"]["residual_l2"]["pixel_auroc"] == pytest.approx(
        metrics["controls"]["residual_l2"]["pixel_auroc"]
    )

    classical = run_cli(
        [*data, "detector=dummy_mean_distance", "detector.pixel_size=8", f"hydra.run.dir={tmp_path}/knn"],
        cwd=tmp_path, module="anomaly_attn.classical",
    )
    assert classical.returncode == 0, classical.stderr[-3000:]
    detector = json.loads((tmp_path / "knn" / "metrics.json").read_text())
    assert detector["model"] == "classical:dummy_mean_distance" and 0.0 <= detector["image_auroc"] <= 1.0
    assert os.environ["ANOMALY_ATTN_TRUSTED_TARGETS"] == TRUSTED


def test_callbacks_come_from_the_callbacks_group(tmp_path: Path) -> None:
    """conf/callbacks/default.yaml builds what the pipeline built by hand; a user's group adds and drops."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from anomaly_attn.training.callbacks import CheckpointOnSignal, RngStateCheckpoint
    from anomaly_attn.training.trainer import build_callbacks
    from tests.conftest import compose_cfg

    built = build_callbacks(compose_cfg(["selection.monitor=val_loss"]), tmp_path / "checkpoints")
    best, last, rng, signal = built
    assert isinstance(best, ModelCheckpoint) and (best.monitor, best.filename) == ("val_loss", "best")
    assert isinstance(last, ModelCheckpoint) and (last.monitor, last.filename) == (None, "last")
    assert best.dirpath == last.dirpath == str(tmp_path / "checkpoints")
    assert isinstance(rng, RngStateCheckpoint) and isinstance(signal, CheckpointOnSignal)
    assert signal.last_ckpt == tmp_path / "checkpoints" / "last.ckpt"

    # The user's callbacks group from a config folder: default's entries, plus one, minus rng_state.
    cfg = compose_cfg(["callbacks=with_early_stopping", f"hydra.searchpath=[file://{USER_CONF}]"])
    kinds = [type(callback) for callback in build_callbacks(cfg, tmp_path)]
    assert kinds == [ModelCheckpoint, ModelCheckpoint, CheckpointOnSignal, EarlyStopping]

    OmegaConf.set_struct(cfg, False)
    cfg.callbacks.broken = {"monitor": "val_loss"}
    with pytest.raises(ValueError, match="callbacks.broken has no _target_"):
        build_callbacks(cfg, tmp_path)
    cfg.callbacks.broken = {"_target_": "os.system", "command": "true"}
    with pytest.raises(UnsafeConfigError, match=r"callbacks\.broken\._target_='os\.system'"):
        build_callbacks(cfg, tmp_path)


def test_every_registry_refuses_a_second_definition_under_a_taken_name() -> None:
    import pytest as _pytest

    from anomaly_attn.classical.detectors import register_detector
    from anomaly_attn.data.synthetic import register_generator
    from anomaly_attn.maps.controls import register_control
    from anomaly_attn.training.losses import register_attention_loss, register_loss

    def imposter(*args, **kwargs):  # a different definition than the one registered under each name
        raise AssertionError("never called")

    for register, name, kind in (
        (register_control, "residual_l2", "control map"),
        (register_loss, "mse", "reconstruction loss"),
        (register_attention_loss, "mean", "attention loss"),
        (register_detector, "knn", "classical detector"),
        (register_generator, "perlin", "synthetic anomaly generator"),
    ):
        with _pytest.raises(ValueError, match=rf"{kind} '{name}' is already registered by .*imposter under"):
            register(name)(imposter)
