"""Safety rules: checkpoints load without running pickled code, configs instantiate only known
classes, and secrets never reach saved configs or folder names."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml

from anomaly_attn.cli import arguments as cli
from anomaly_attn.config.safety import (
    UnsafeConfigError,
    check_no_secret_overrides,
    check_targets,
    looks_secret,
)
from anomaly_attn.data.build import build_dataset
from anomaly_attn.run.store import public_config
from tests.conftest import REPO, compose_cfg

PACKAGE = REPO / "anomaly_attn"



def _weights_only_true(call: ast.Call) -> bool:
    return any(
        kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
        for kw in call.keywords
    )


def unsafe_checkpoint_loads(source: str) -> list[int]:
    """Lines of ``torch.load(...)``, ``X.load_from_checkpoint(...)`` and ``trainer.fit/validate/test/
    predict(..., ckpt_path=...)`` calls that do not pass ``weights_only=True``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name, owner = node.func.attr, node.func.value
        is_torch_load = name == "load" and isinstance(owner, ast.Name) and owner.id == "torch"
        loads_ckpt = name in {"fit", "validate", "test", "predict"} and any(
            kw.arg == "ckpt_path" for kw in node.keywords
        )
        if (is_torch_load or name == "load_from_checkpoint" or loads_ckpt) and not _weights_only_true(node):
            lines.append(node.lineno)
    return lines


def test_the_checkpoint_scanner_catches_unsafe_loads() -> None:
    source = (
        "import torch\n"
        "torch.load(p)\n"
        "torch.load(p, weights_only=False)\n"
        "torch.load(p, weights_only=True)\n"
        "M.load_from_checkpoint(p)\n"
        "trainer.fit(m, ckpt_path=p)\n"
        "trainer.fit(m, ckpt_path=p, weights_only=True)\n"
        "trainer.fit(m)\n"
    )
    assert unsafe_checkpoint_loads(source) == [2, 3, 5, 6]


def test_every_checkpoint_load_in_the_package_is_weights_only() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    offenders = {
        str(path.relative_to(REPO)): lines
        for path in files
        if (lines := unsafe_checkpoint_loads(path.read_text()))
    }
    assert offenders == {}, f"pass weights_only=True at {offenders}"
    # Plain-text guards for what the AST scan cannot see (aliases, keyword dicts).
    for path in files:
        text = path.read_text()
        assert "weights_only=False" not in text and "from torch import load" not in text, path


def test_public_config_scrubs_secrets_but_keeps_ordinary_keys() -> None:
    cfg = compose_cfg(
        [
            "+logger.wandb.api_key=sk-abc123",
            "+cluster.token=tok-987",
            "+cluster.db_password=hunter2",
            "+cluster.client_secret=s3cr3t",
            "+cluster.keypoints=4",
        ]
    )
    public = public_config(cfg)
    dumped = yaml.safe_dump(public)
    for secret in ("sk-abc123", "tok-987", "hunter2", "s3cr3t"):
        assert secret not in dumped
    assert public["logger"]["wandb"]["api_key"] == "***"
    assert public["cluster"] == {"token": "***", "db_password": "***", "client_secret": "***", "keypoints": 4}
    assert public["selection"]["monitor"] == "val_loss" and public["seed"] == 0


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("api_key", True),
        ("logger.wandb.api_key", True),
        ("WANDB_KEY", True),
        ("apikey", True),
        ("hf_token", True),
        ("password", True),
        ("exclude_keys", False),
        ("keypoints", False),
        ("monitor", False),
        ("topk_percent", False),
    ],
)
def test_looks_secret(key: str, secret: bool) -> None:
    assert looks_secret(key) is secret


def test_literal_secrets_on_the_command_line_are_refused_before_hydra(monkeypatch, capsys) -> None:
    with pytest.raises(UnsafeConfigError, match="environment"):
        check_no_secret_overrides(["-m", "category=brick", "+logger.wandb.api_key=sk-abc123"])
    check_no_secret_overrides(["+logger.wandb.api_key=${oc.env:WANDB_API_KEY}", "seed=1"])
    check_no_secret_overrides(["hydra.job.config.override_dirname.exclude_keys=[seed]"])

    started = []
    monkeypatch.setattr(sys, "argv", ["train", "+logger.wandb.api_key=sk-abc123"])
    with pytest.raises(SystemExit) as exit_info:
        cli.run_hydra_app(lambda: started.append(True))
    assert exit_info.value.code == 2 and not started
    assert "sk-abc123" not in capsys.readouterr().err


def test_a_foreign_target_is_refused_before_instantiation(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    cfg = compose_cfg(["dataset._target_=os.system", f"dataset.root=touch {marker}"])
    with pytest.raises(UnsafeConfigError, match=r"dataset._target_='os.system' is refused.*anomaly_attn"):
        build_dataset(cfg)
    assert not marker.exists()


def test_nested_targets_are_checked_and_known_ones_pass() -> None:
    with pytest.raises(UnsafeConfigError, match=r"dataset.augment._target_='subprocess.run'"):
        node = {"_target_": "anomaly_attn.data.folder.Folder", "augment": {"_target_": "subprocess.run"}}
        check_targets(node, "dataset")
    with pytest.raises(UnsafeConfigError, match=r"x\[1\]._target_='builtins.eval'"):
        check_targets([{"_target_": "torch.nn.Identity"}, {"_target_": "builtins.eval"}], "x")
    check_targets({"_target_": "lightning.pytorch.Trainer", "t": [{"_target_": "timm.create_model"}]})
    dataset = build_dataset(compose_cfg(["dataset=textures"]))
    assert type(dataset).__module__ == "anomaly_attn.data.textures"


# --- every _target_ of every entry point, before anything is instantiated ----------------------------------

ENTRY_POINTS = {"train": "config", "evaluate": "evaluate", "predict": "predict", "classical": "classical"}
UNSAFE = {
    "torch.hub.load": "it loads code or pickled objects",
    "os.system": "it is outside the classes configs may instantiate",
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("target", sorted(UNSAFE))
@pytest.mark.parametrize(
    "key",
    ["++trainer._target_", "+hydra.callbacks.evil._target_", "+hydra.launcher.x._target_", "+cb._target_"],
)
def test_every_entry_point_refuses_unsafe_targets_before_hydra(
    monkeypatch, capsys, entry: str, target: str, key: str
) -> None:
    started = []
    monkeypatch.setattr(sys, "argv", [entry, f"{key}={target}"])
    with pytest.raises(SystemExit) as exit_info:
        cli.run_hydra_app(lambda: started.append(True), config_name=ENTRY_POINTS[entry])
    assert exit_info.value.code == 2 and not started
    err = capsys.readouterr().err
    assert f"._target_='{target}' is refused: {UNSAFE[target]}" in err


def test_the_shipped_configs_pass_the_check() -> None:
    from hydra import compose, initialize_config_dir

    from anomaly_attn.config.paths import CONFIG_DIR
    from anomaly_attn.config.safety import check_config

    for name, extra in (
        ("config", ["hydra/launcher=joblib"]),
        ("config", ["hydra/launcher=submitit_slurm"]),
        ("evaluate", []),
        ("predict", []),
        ("classical", []),
    ):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            check_config(compose(config_name=name, overrides=extra, return_hydra_config=True))


def test_a_job_checks_its_own_config_and_trusted_prefixes(monkeypatch) -> None:
    from omegaconf import OmegaConf

    from anomaly_attn.config.safety import TRUSTED_TARGETS_ENV, check_config

    job = OmegaConf.create({"dataset": {"_target_": "mylab.data.Mine"}})
    with pytest.raises(UnsafeConfigError, match=r"config.dataset._target_='mylab.data.Mine'"):
        check_config(job, OmegaConf.create({"callbacks": {}}))
    monkeypatch.setenv(TRUSTED_TARGETS_ENV, "mylab.")
    check_config(job, OmegaConf.create({"callbacks": {}}))
    with pytest.raises(UnsafeConfigError, match="loads code"):  # trusted or not, never torch.hub
        check_config(OmegaConf.create({"m": {"_target_": "torch.hub.load"}}))
    with pytest.raises(UnsafeConfigError, match=r"hydra.job_logging.handlers.h.class='os.system'"):
        hydra_node = {"job_logging": {"handlers": {"h": {"class": "os.system"}}}}
        check_config(OmegaConf.create({}), OmegaConf.create(hydra_node))


def test_a_trainer_target_other_than_lightnings_is_an_error_not_dropped(tmp_path: Path) -> None:
    from anomaly_attn.training.trainer import make_trainer

    cfg = compose_cfg(["trainer._target_=anomaly_attn.training.trainer.make_trainer"])
    with pytest.raises(ValueError, match=r"trainer._target_='anomaly_attn.training.trainer.make_trainer'"):
        make_trainer(cfg, tmp_path, [], [])


def test_unsafe_hydra_callback_never_runs_from_the_real_cli(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    marker = tmp_path / "pwned"
    done = run_cli(
        ["+hydra.callbacks.evil._target_=os.system", f"+hydra.callbacks.evil._args_=[touch {marker}]"],
        tmp_path,
        module="anomaly_attn.predict",
    )
    assert done.returncode == 2 and not marker.exists()
    assert "hydra.callbacks.evil._target_='os.system' is refused" in done.stderr


@pytest.mark.parametrize("entry", ["anomaly_attn.predict", "anomaly_attn.evaluate", "anomaly_attn.classical"])
def test_literal_secrets_are_refused_by_every_entry_point(tmp_path: Path, entry: str) -> None:
    from tests.conftest import run_cli

    done = run_cli(["+logger.wandb.api_key=sk-abc123"], tmp_path, module=entry)
    assert done.returncode == 2 and "environment" in done.stderr and "sk-abc123" not in done.stderr
