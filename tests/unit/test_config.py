"""Every option of every config group composes and resolves; stable keys exist."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from anomaly_attn.cli.sweeps import CONFIG_DIR, SweepError, expand_sweep_overrides
from tests.conftest import compose_cfg

GROUPS = ["dataset", "model", "loss", "attention", "trainer", "logger", "experiment"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]



@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes_and_resolves(group: str, option: str) -> None:
    overrides = [f"{group}={option}"]
    if option == "folder":
        overrides.append("dataset.root=/tmp/some_folder")
    cfg = compose_cfg(overrides)
    container = OmegaConf.to_container(cfg, resolve=True)
    identity = {
        "dataset": ("dataset", "name"),
        "model": ("model", "name"),
        "loss": ("loss", "name"),
        "attention": ("attention", "variant"),
        "experiment": ("experiment_name",),
    }
    if group in identity:
        node = container
        for part in identity[group]:
            node = node[part]
        assert node == option
    elif group == "trainer":
        assert container["trainer"]["inference_mode"] is False
    else:  # one logger per entry, each by its _target_
        expected = {"csv": {"csv"}, "wandb": {"csv", "wandb"}, "none": set()}[option]
        assert set(container["logger"]) == expected
        assert all("_target_" in entry for entry in container["logger"].values())


def test_stable_keys_exist() -> None:
    cfg = compose_cfg([])
    for key in (
        "dataset.root",
        "dataset.image_size",
        "dataset.batch_size",
        "category",
        "layer",
        "seed",
        "trainer.max_epochs",
        "map.weight",
        "map.every_n_steps",
        "map.loss",
        "map.input",
    ):
        assert OmegaConf.select(cfg, key, throw_on_missing=False) is not None or key in ("category", "layer")
    assert cfg.trainer.inference_mode is False, "attention needs gradients at test time"


def test_glob_expands_against_the_dataset_and_the_model() -> None:
    args = expand_sweep_overrides(["-m", "dataset=textures", "category=glob(*)", "layer=glob(encoder.1*)"])
    assert "category=brick,grass,gravel" in args
    layer_arg = next(a for a in args if a.startswith("layer="))
    assert layer_arg.split("=")[1].split(",") == ["encoder.1"] + [f"encoder.{i}" for i in range(10, 20)]
    args = expand_sweep_overrides(["-m", "category=glob(*,exclude=gr*)"])
    assert "category=brick" in args


def test_bad_names_are_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="gravel"):
        expand_sweep_overrides(["category=marble"])
    with pytest.raises(SweepError, match="encoder.21"):
        expand_sweep_overrides(["layer=encoder.99"])
    with pytest.raises(SweepError, match="matches none"):
        expand_sweep_overrides(["-m", "category=glob(zz*)"])
    with pytest.raises(SweepError, match="swept too"):
        expand_sweep_overrides(["-m", "dataset=textures,mvtec", "category=glob(*)"])
