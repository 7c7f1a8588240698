"""The command-line checks, error messages, quiet logging and run-folder names, without a subprocess."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from anomaly_attn.cli.arguments import run_category
from anomaly_attn.cli.errors import describe
from anomaly_attn.cli.preflight import check_names, check_output_folder, compose_config, preflight
from anomaly_attn.cli.quiet import NOISE, DropNoise, quiet_third_party_output
from anomaly_attn.common.registries import close_names, did_you_mean, unknown_name


def test_did_you_mean_names_the_closest_valid_names_best_first() -> None:
    variants = ["mean_abs_cam", "gradcam", "layercam", "gradcam_pp"]
    assert close_names("gradcamxx", variants) == ["gradcam", "gradcam_pp"]
    assert did_you_mean("max_epoch", ["max_epochs", "devices"], prefix="trainer.") == (
        " Did you mean 'trainer.max_epochs'?"
    )
    assert did_you_mean("zzz", ["mean_abs_cam", "gradcam"]) == ""
    assert unknown_name("detector", "knnn", ["lof", "knn"]) == (
        "detector='knnn' is not registered. Did you mean 'knn'? Valid: knn, lof."
    )


def test_user_errors_read_as_their_message_and_others_name_their_type() -> None:
    assert describe(ValueError("dataset.root=/x is not a folder")) == "dataset.root=/x is not a folder"
    assert describe(KeyError("pixel_auroc")) == "KeyError: 'pixel_auroc'"
    assert describe(RuntimeError()) == "RuntimeError"


@pytest.mark.parametrize(
    "message",
    [
        "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](https://x)",
        "The `srun` command is available on your system but is not used. HINT: ...",
        "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead.",
        "The number of training batches (9) is smaller than the logging interval Trainer(log_every_n_steps=",
        "GPU available: False, used: False",
    ],
)
def test_noise_is_dropped(message: str) -> None:
    record = logging.LogRecord("lightning.pytorch", logging.INFO, __file__, 1, message, None, None)
    assert not DropNoise().filter(record)
    assert len(NOISE) == 6


def test_the_users_records_pass() -> None:
    for message in ("Selection on 64 validation images", "Layer encoder.15: alpha is degenerate", "GPU 0"):
        record = logging.LogRecord("anomaly_attn", logging.INFO, __file__, 1, message, None, None)
        assert DropNoise().filter(record)


def test_lightning_records_reach_the_root_handlers_only(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("lightning")
    monkeypatch.setattr(logger, "handlers", [logging.StreamHandler()])
    monkeypatch.setattr(logger, "propagate", False)
    console = logging.StreamHandler()
    monkeypatch.setattr(logging.getLogger(), "handlers", [console])
    quiet_third_party_output()
    assert logger.handlers == [] and logger.propagate
    assert sum(isinstance(f, DropNoise) for f in console.filters) == 1
    quiet_third_party_output()  # a second job in the same process adds no second filter
    assert sum(isinstance(f, DropNoise) for f in console.filters) == 1


def test_a_run_folder_is_named_by_the_category_actually_used() -> None:
    cfg = compose_config(["dataset=textures"], "config")
    assert cfg.category is None
    assert run_category(_root_=cfg) == "brick"
    assert "/runs/textures/brick/" in str(cfg.hydra.run.dir)
    assert "/runs/textures/grass/" in str(compose_config(["category=grass"], "config").hydra.run.dir)
    folder_without_root = compose_config(["dataset=folder", "dataset.root=/nonexistent"], "config")
    assert run_category(_root_=folder_without_root) == "default"


def test_an_unknown_key_names_its_parent_keys_and_the_closest(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^dataset.image_sise is not a config key. Did you mean "
                       r"'dataset.image_size'\? Keys of dataset: "):
        compose_config(["dataset.image_sise=64"], "config")
    with pytest.raises(ValueError, match=r"^loss=msee is not a config of the loss group. Did you mean 'mse'"):
        compose_config(["loss=msee"], "config")


def test_names_are_checked_against_the_registries() -> None:
    check_names(compose_config([], "config"))  # the defaults are valid
    with pytest.raises(ValueError, match=r"loss.terms='msee' is not registered. Did you mean 'mse'"):
        check_names(compose_config(["+loss.terms.msee=1.0"], "config"))
    with pytest.raises(ValueError, match=r"^cannot set loss.terms: Key 'msee' is not in struct"):
        compose_config(["loss.terms={msee: 1.0}"], "config")
    with pytest.raises(ValueError, match=r"map.loss='means' is not registered. Did you mean 'mean'"):
        check_names(compose_config(["map.loss=means"], "config"))
    with pytest.raises(ValueError, match=r"model.name='unett' is not registered. Did you mean 'unet'"):
        check_names(compose_config(["model.name=unett"], "config"))


def test_each_value_of_a_sweep_is_checked(tmp_path: Path) -> None:
    preflight(["-m", "map.variant=mean_abs_cam,layercam", f"paths.output_dir={tmp_path}"], "config")
    with pytest.raises(ValueError, match="map.variant='lyercam'"):
        preflight(["-m", "map.variant=mean_abs_cam,lyercam", f"paths.output_dir={tmp_path}"], "config")
    with pytest.raises(ValueError, match="loss=mae is not a config of the loss group"):
        preflight(["-m", "loss=mse,mae", f"paths.output_dir={tmp_path}"], "config")


def test_an_output_folder_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    cfg = compose_config([f"paths.output_dir={tmp_path / 'file' / 'out'}"], "config")
    with pytest.raises(ValueError, match=r"cannot write the output folder .* is a file\). Choose"):
        check_output_folder(cfg, multirun=False)
    check_output_folder(compose_config([f"paths.output_dir={tmp_path / 'new' / 'deep'}"], "config"), True)
    assert not (tmp_path / "new").exists(), "the check creates nothing"


def test_a_swept_mandatory_value_is_given(tmp_path: Path) -> None:
    two_checkpoints = f"ckpt_path={tmp_path}/a.ckpt,{tmp_path}/b.ckpt"
    preflight(["-m", two_checkpoints, f"paths.output_dir={tmp_path}"], "evaluate")
    with pytest.raises(ValueError, match=r"^evaluate needs ckpt_path, e.g. python -m anomaly_attn.evaluate"):
        preflight(["-m", "layer=encoder.1,encoder.2", f"paths.output_dir={tmp_path}"], "evaluate")
