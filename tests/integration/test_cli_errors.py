"""Ordinary mistakes, tried as a user would, each as a subprocess of the command's ``python -m`` form: one
screen naming the culprit and the fix, a non-zero exit status, and no traceback (``--debug`` or
``HYDRA_FULL_ERROR=1`` asks for one)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import run_cli, user_env
from tests.fixtures import make_mvtec_tree


@dataclass(frozen=True)
class Case:
    """A command (module, arguments with ``{tmp}`` for the case folder), its exit status and the words
    its error must contain."""

    module: str
    args: tuple[str, ...]
    status: int
    words: tuple[str, ...]
    absent: tuple[str, ...] = ()


TRAIN = "anomaly_attn.train"
QUICK = ("logger=none", "trainer.max_epochs=1", "paths.output_dir={tmp}/outputs")

CASES = {
    "empty dataset.root": Case(
        TRAIN, ("dataset=folder", "dataset.root={tmp}/empty", *QUICK), 1,
        ("dataset.root=", "holds no category folder", "CATEGORY/train/good"),
    ),
    "missing dataset.root (folder)": Case(
        TRAIN, ("dataset=folder", "dataset.root={tmp}/nothere", *QUICK), 1,
        ("dataset.root=", "is not a folder", "set dataset.root to the folder"), ("'CATEGORY'",),
    ),
    "missing dataset.root (mvtec)": Case(
        TRAIN, ("dataset=mvtec", "dataset.root={tmp}/nothere", *QUICK), 1,
        ("MVTec AD category 'bottle' not found", "dataset.download=true"),
    ),
    "missing dataset.root (elpv)": Case(
        TRAIN, ("dataset=elpv", "dataset.root={tmp}/nothere", *QUICK), 1,
        ("ELPV not found: dataset.root={tmp}/nothere holds no labels.csv",
         "pip install 'anomaly_attn[elpv]'"),
    ),
    "unknown elpv option": Case(
        TRAIN, ("dataset=elpv", "dataset.uncertain=drop", *QUICK), 1,
        ("dataset.uncertain must be one of exclude, test, got 'drop'",),
    ),
    "folder dataset without a root": Case(
        TRAIN, ("dataset=folder", *QUICK), 2, ("train needs dataset.root", "dataset.root=/path"),
    ),
    "corrupt image": Case(
        TRAIN,
        ("dataset=folder", "dataset.root={tmp}/tree", "category=bottle", "dataset.image_size=64",
         "dataset.cache.enabled=false", *QUICK),
        1, ("cannot decode image", "000.png", "dataset.skip_corrupt=true"),
    ),
    "truncated checkpoint": Case(
        "anomaly_attn.evaluate", ("ckpt_path={tmp}/truncated.ckpt", *QUICK), 1,
        ("truncated.ckpt is truncated or corrupted", "checkpoints/model.ckpt"), ("weights_only",),
    ),
    "garbage checkpoint": Case(
        "anomaly_attn.evaluate", ("ckpt_path={tmp}/garbage.ckpt", *QUICK), 1,
        ("garbage.ckpt is not a checkpoint",), ("weights_only",),
    ),
    "garbage checkpoint (predict)": Case(
        "anomaly_attn.predict", ("ckpt_path={tmp}/garbage.ckpt", "input_dir={tmp}/tree/bottle/test"), 1,
        ("garbage.ckpt is not a checkpoint",), ("weights_only",),
    ),
    "output folder under a file": Case(
        TRAIN, ("logger=none", "paths.output_dir={tmp}/a_file/outputs"), 2,
        ("cannot write the output folder", "a_file is a file", "paths.output_dir=DIR"),
    ),
    "image size too small for the backbone": Case(
        TRAIN, ("dataset.image_size=32", *QUICK), 1,
        ("image_size=32 must be a multiple of its total stride 32", "dataset.image_size=64"),
    ),
    "unknown attention variant": Case(
        TRAIN, ("map.variant=gradcamxx", *QUICK), 2,
        ("map.variant='gradcamxx' is not registered", "Did you mean 'gradcam'", "layercam"),
    ),
    "unknown attention variant in a sweep": Case(
        TRAIN, ("-m", "map.variant=mean_abs_cam,gradcamxx", "hydra.sweep.dir={tmp}/sweep", *QUICK), 2,
        ("map.variant='gradcamxx' is not registered",),
    ),
    "unknown map config": Case(
        TRAIN, ("map=gradcamxx", *QUICK), 2,
        ("map=gradcamxx is not a config of the map group", "Did you mean 'gradcam'"),
    ),
    "unknown fusion": Case(
        TRAIN, ("map.fusion=zsumm", *QUICK), 2, ("map.fusion='zsumm'", "Did you mean 'zsum'"),
    ),
    "zsum fusion without selection": Case(
        TRAIN, ("map.fusion=zsum", "selection.map=fixed", *QUICK), 2,
        ("map.fusion=zsum needs the validation statistics", "selection.map=auto"),
    ),
    "unknown selection variant": Case(
        TRAIN, ("selection.variants=[mean_abs_cam,layercamm]", *QUICK), 2,
        ("selection.variants", "layercamm"),
    ),
    "unknown synthetic generator": Case(
        TRAIN, ("validation.generators=[perlin,cutpastes]", *QUICK), 2,
        ("unknown synthetic anomaly generator 'cutpastes'", "cutpaste"),
    ),
    "misspelled key": Case(
        TRAIN, ("trainer.max_epoch=1", "logger=none"), 2,
        ("trainer.max_epoch is not a config key", "Did you mean 'trainer.max_epochs'"), ("+trainer",),
    ),
    "added key that is no Trainer argument": Case(
        TRAIN, ("+trainer.max_epoch=1", "logger=none"), 2,
        ("trainer.max_epoch is not an argument of Lightning's Trainer", "Did you mean 'trainer.max_epochs'"),
    ),
    "unknown category": Case(
        TRAIN, ("category=bricks", *QUICK), 2, ("unknown textures category 'bricks'", "brick, grass, gravel"),
    ),
    "unknown layer": Case(
        TRAIN, ("layer=encoder.99", *QUICK), 2, ("layer='encoder.99' is not a layer", "encoder.15"),
    ),
    "evaluate without ckpt_path": Case(
        "anomaly_attn.evaluate", ("logger=none",), 2,
        ("evaluate needs ckpt_path", "python -m anomaly_attn.evaluate ckpt_path="),
    ),
    "predict without ckpt_path": Case(
        "anomaly_attn.predict", ("input_dir={tmp}",), 2,
        ("predict needs ckpt_path", "python -m anomaly_attn.predict ckpt_path="),
    ),
    "classical with an unknown detector": Case(
        "anomaly_attn.classical", ("detector=knnn",), 2,
        ("detector=knnn is not a config of the detector group", "Did you mean 'knn'"),
    ),
    "layers with a missing checkpoint": Case(
        "anomaly_attn.layers", ("ckpt_path={tmp}/missing.ckpt",), 2, ("missing.ckpt does not exist",),
    ),
    "layers with a misspelled key": Case(
        "anomaly_attn.layers", ("model.nam=unet",), 2, ("model.nam is not a config key", "'model.name'"),
    ),
    "report of a missing folder": Case(
        "anomaly_attn.report", ("{tmp}/no_runs_here",), 2, ("no_runs_here does not exist",),
    ),
}


def _prepare(tmp: Path) -> None:
    """The files the cases name: an empty root, a tree with one corrupt image, bad checkpoints, a file."""
    (tmp / "empty").mkdir()
    make_mvtec_tree(tmp / "tree", ["bottle"], n_train=4)
    (tmp / "tree" / "bottle" / "train" / "good" / "000.png").write_bytes(b"\x89PNG not really")
    torch.save({"state_dict": {"w": torch.ones(64, 64)}}, tmp / "whole.ckpt")
    data = (tmp / "whole.ckpt").read_bytes()
    (tmp / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp / "garbage.ckpt").write_bytes(bytes(range(256)) * 20)
    (tmp / "a_file").write_text("a file, not a folder\n")


def _run(case: Case, tmp: Path) -> subprocess.CompletedProcess:
    env = user_env()
    args = [arg.replace("{tmp}", str(tmp)) for arg in case.args]
    return subprocess.run(
        [sys.executable, "-m", case.module, *args], cwd=tmp, env=env, capture_output=True, text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every case run once, two at a time (each is mostly interpreter start-up and imports)."""
    folders = {name: tmp_path_factory.mktemp("case") for name in CASES}
    for folder in folders.values():
        _prepare(folder)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_run, case, folders[name]) for name, case in CASES.items()}
        return {name: (future.result(), folders[name]) for name, future in futures.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_a_mistake_gets_one_screen_naming_the_culprit_and_the_fix(name: str, outcomes: dict) -> None:
    case = CASES[name]
    result, tmp = outcomes[name]
    output = result.stdout + result.stderr
    assert result.returncode == case.status, output
    assert "Traceback" not in output, output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, output
    for word in case.words:
        assert word.replace("{tmp}", str(tmp)) in result.stderr, (word, output)
    for word in case.absent:
        assert word not in output, (word, output)


def test_a_sweep_with_a_bad_value_starts_no_job(outcomes: dict) -> None:
    _, tmp = outcomes["unknown attention variant in a sweep"]
    assert not (tmp / "sweep").exists()


def test_debug_shows_the_traceback_and_keeps_the_exit_status(tmp_path: Path) -> None:
    result = _run(Case(TRAIN, ("map.variant=gradcamxx", "--debug", *QUICK), 2, ()), tmp_path)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "error: map.variant='gradcamxx'" in result.stderr


def test_the_old_names_still_compose_with_a_note(tmp_path: Path) -> None:
    """`attention=`, `attention.*`, the `seed` variant and `experiment=seed_repro` (names before 0.2) still
    work, in both command forms: each prints one note with the new spelling and composes the new config."""
    old = ["attention=seed", "attention.weight=0.1", "experiment=seed_repro", "--cfg", "job"]
    for result in (
        run_cli(old, tmp_path),
        subprocess.run([str(Path(sys.executable).parent / "anomaly-attn-train"), *old], cwd=tmp_path,
                       env=user_env(), capture_output=True, text=True, timeout=300),
    ):
        assert result.returncode == 0, result.stderr[-2000:]
        notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
        assert len(notes) == 3 and "'map=mean_abs_cam'" in notes[0] and "'map.weight=0.1'" in notes[1]
        config = yaml.safe_load(result.stdout)
        assert config["map"]["variant"] == "mean_abs_cam" and config["map"]["weight"] == 0.1
        assert config["experiment_name"] == "research_schedule" and "attention" not in config
