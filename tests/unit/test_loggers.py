"""Loggers come from the `logger` config group (conf/logger/), every entry by its `_target_`: CSV, W&B with
the job's identity and config, a user's own logger from one yaml, and the old flag form of the group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import OmegaConf

from anomaly_attn.config.safety import UnsafeConfigError
from anomaly_attn.run.store import job_fingerprint
from anomaly_attn.training.loggers import close_wandb, logger_nodes
from anomaly_attn.training.trainer import build_loggers, run_name
from tests.conftest import compose_cfg, tiny_overrides

USER_CONF = Path(__file__).resolve().parents[1] / "extensions" / "conf"


@pytest.fixture
def trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMALY_ATTN_TRUSTED_TARGETS", "tests.extensions.")


def user_logger_cfg(*overrides: str):
    return compose_cfg(
        tiny_overrides(category="brick", logger="with_jsonl", **{"hydra.searchpath": f"[file://{USER_CONF}]"})
        + list(overrides)
    )


def test_wandb_logger_carries_the_jobs_identity_config_and_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb_dir = tmp_path / "wandb_runs"
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_PROJECT", "from_env")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the yaml's default: offline
    cfg = compose_cfg(tiny_overrides(category="brick", logger="wandb", experiment_name="exp1",
                                     **{"+api_token": "sk-abc123", "tags": "[mine]"}))
    try:
        csv, wandb_logger = build_loggers(cfg, tmp_path / "run", "brick", "encoder.16")
        assert isinstance(csv, CSVLogger) and isinstance(wandb_logger, WandbLogger)
        assert Path(csv.log_dir) == tmp_path / "run" / "csv"
        run = wandb_logger.experiment
        identity = ("exp1", "textures", run_name(cfg, "brick", "encoder.16"))
        assert (run.group, run.job_type, run.name) == identity
        assert run.name == "textures-brick-conv_ae-encoder.16-mse-mean_abs_cam-s0"
        assert set(run.tags) == {"dataset:textures", "category:brick", "layer:encoder.16", "loss:mse",
                                 "map:mean_abs_cam", "model:conv_ae", "mine"}
        assert run.project == "from_env" and run.settings.mode == "offline"
        assert Path(run.dir).is_relative_to(wandb_dir / "wandb")
        assert run.config["api_token"] == "***"  # secrets scrubbed
        assert run.config["provenance"]["config_digest"] == job_fingerprint(cfg)["config_digest"]
        assert run.config["dataset"]["name"] == "textures"
        # The same config in the CSV log's hparams.yaml.
        hparams = OmegaConf.load(Path(csv.log_dir) / "hparams.yaml")
        assert hparams.api_token == "***" and hparams.provenance.config_digest == run.config["provenance"][
            "config_digest"]
    finally:
        close_wandb()

    # The keys users set today still work: logger.wandb.mode/project/entity.
    cfg = compose_cfg(tiny_overrides(logger="wandb", **{"logger.wandb.project": "p2", "logger.wandb.mode":
                                                        "disabled"}))
    nodes = OmegaConf.to_container(logger_nodes(cfg), resolve=True)
    assert (nodes["wandb"]["project"], nodes["wandb"]["mode"]) == ("p2", "disabled")
    assert nodes["wandb"]["save_dir"] == str(wandb_dir)  # $WANDB_DIR


def test_a_users_logger_is_one_yaml_with_its_save_dir_and_name_filled(tmp_path: Path, trusted: None) -> None:
    from tests.extensions.dummy_logger import JsonLinesLogger

    cfg = user_logger_cfg()
    csv, jsonl = build_loggers(cfg, tmp_path, "brick", "encoder.16")
    assert isinstance(csv, CSVLogger) and isinstance(jsonl, JsonLinesLogger)
    assert jsonl.save_dir == str(tmp_path)
    assert jsonl.name == "textures-brick-conv_ae-encoder.16-mse-mean_abs_cam-s0"
    (record,) = [json.loads(line) for line in jsonl.path.read_text().splitlines()]
    assert record["hparams"]["provenance"] == job_fingerprint(cfg)
    # An entry set to null is dropped (as logger.csv=false, the old flag).
    assert [type(x) for x in build_loggers(user_logger_cfg("logger.csv=null"), tmp_path, "b", "l")] == [
        JsonLinesLogger]
    assert [type(x) for x in build_loggers(user_logger_cfg("logger.csv=false"), tmp_path, "b", "l")] == [
        JsonLinesLogger]
    assert build_loggers(compose_cfg(tiny_overrides(logger="none")), tmp_path, "b", "l") == []


def test_a_bad_logger_entry_names_itself_and_the_fix(
    tmp_path: Path, trusted: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def with_entry(entry):
        cfg = user_logger_cfg()
        OmegaConf.set_struct(cfg, False)
        cfg.logger.jsonl = entry
        return cfg

    with pytest.raises(ValueError, match=r"logger\.jsonl has no _target_.*or null to drop it"):
        build_loggers(with_entry({"save_dir": None}), tmp_path, "b", "l")
    unbuildable = r"logger\.jsonl \(tests\.extensions\.dummy_logger\.JsonLinesLogger\) could not be built: "
    with pytest.raises(ValueError, match=unbuildable + r"TypeError: .*'colour'.*logger\.jsonl=null"):
        build_loggers(with_entry({"_target_": "tests.extensions.dummy_logger.JsonLinesLogger",
                                  "save_dir": None, "name": None, "colour": "red"}), tmp_path, "b", "l")
    with pytest.raises(ValueError, match=r"logger\.jsonl: .*EarlyStopping built a EarlyStopping, not a"):
        build_loggers(with_entry({"_target_": "lightning.pytorch.callbacks.EarlyStopping", "monitor": "x"}),
                      tmp_path, "b", "l")
    monkeypatch.delenv("ANOMALY_ATTN_TRUSTED_TARGETS")
    with pytest.raises(UnsafeConfigError, match=r"logger\.jsonl\._target_='tests\.extensions\.dummy_logger"):
        build_loggers(user_logger_cfg(), tmp_path, "b", "l")
    with pytest.raises(UnsafeConfigError, match=r"logger\.jsonl\._target_='os\.system'"):
        build_loggers(with_entry({"_target_": "os.system", "command": "true"}), tmp_path, "b", "l")


def test_the_old_flag_form_of_the_logger_group_still_builds(tmp_path: Path) -> None:
    """A config.yaml written before loggers came by _target_: `logger: {csv: bool, wandb: null | {mode,
    project, entity}}`."""
    cfg = compose_cfg(tiny_overrides(experiment_name="old"))
    OmegaConf.set_struct(cfg, False)
    cfg.logger = {"csv": True, "wandb": None}
    assert [type(x) for x in build_loggers(cfg, tmp_path, "b", "l")] == [CSVLogger]
    cfg.logger = {"csv": False, "wandb": None}
    assert build_loggers(cfg, tmp_path, "b", "l") == []
    cfg.logger = {"csv": True, "wandb": {"mode": "online", "project": "old_project", "entity": None}}
    nodes = OmegaConf.to_container(logger_nodes(cfg), resolve=True)
    assert nodes["csv"]["_target_"] == "lightning.pytorch.loggers.CSVLogger"
    assert nodes["wandb"]["_target_"] == "anomaly_attn.training.loggers.wandb_logger"
    assert (nodes["wandb"]["mode"], nodes["wandb"]["project"], nodes["wandb"]["group"]) == (
        "online", "old_project", "old")
    assert cfg.logger.wandb.mode == "online" and "_target_" not in cfg.logger.wandb  # cfg itself unchanged
