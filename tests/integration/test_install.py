"""The package as a cluster installs it: a wheel (and an editable install) run from an empty directory.

Each test builds from a copy of the sources (an in-tree build would leave build/ and *.egg-info in the
repository, shared with concurrent runs), installs into a fresh virtual environment whose only own
package is anomaly_attn, and borrows the running environment's dependencies (torch, Lightning, ...)
through a .pth file written after the install, so pip never sees, or touches, another anomaly_attn.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_overrides

# What a build needs: the package, the configs it ships, and the build's own files.
WHEEL_SOURCES = ("pyproject.toml", "setup.py", "README.md", "anomaly_attn", "conf")
# A variant of a packaged dataset, as a user (or a new file in the tree) would add it.
TEXTURES_96 = "defaults:\n  - textures\n  - _self_\nimage_size: 96\n"


def copy_sources(destination: Path) -> Path:
    destination.mkdir()
    for name in WHEEL_SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, destination / name)
    return destination


def pip(*args: str) -> None:
    # No PYTHONPATH: a clone on it (with its *.egg-info) would look to pip like an installed anomaly_attn.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"pip {' '.join(args)}\n{done.stdout}\n{done.stderr}"


def make_venv(path: Path) -> Path:
    """A virtual environment without pip (the running pip installs into it); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    return path / "bin" / "python"


def borrow_dependencies(python: Path) -> None:
    """Make the running environment's packages importable in ``python``'s environment."""
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # A plain path line: the borrowed folder's own .pth files (its editable anomaly_attn) are not run.
    Path(purelib, "_borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")


def user_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user of the installed package: no PYTHONPATH into the clone."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ANOMALY_ATTN_OUTPUT_DIR")}
    env.pop("ANOMALY_ATTN_CONFIG_DIR", None)
    env.update(WANDB_MODE="offline", ANOMALY_ATTN_PROGRESS="0", **extra)
    return env


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


def user_config_dir(root: Path) -> Path:
    (root / "dataset").mkdir(parents=True)
    (root / "dataset" / "textures_96.yaml").write_text(TEXTURES_96)
    return root


@pytest.mark.slow
def test_wheel_ships_configs_and_runs_from_an_empty_directory(tmp_path: Path) -> None:
    sources = copy_sources(tmp_path / "src")
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(sources))
    (wheel,) = (tmp_path / "dist").glob("anomaly_attn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.removeprefix("anomaly_attn/conf/") for n in names if n.startswith("anomaly_attn/conf/")}
    assert shipped == {str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    assert {"anomaly_attn/conf/config.yaml", "anomaly_attn/conf/dataset/textures.yaml"} <= names

    python = make_venv(tmp_path / "venv")
    pip("--python", str(python), "install", "--no-deps", "--no-index", str(wheel))
    borrow_dependencies(python)
    workdir = tmp_path / "empty"
    workdir.mkdir()
    env = user_env(tmp_path)

    where = run([str(python), "-c", "import anomaly_attn; print(anomaly_attn.__file__)"], workdir, env)
    assert Path(where.strip()).is_relative_to(tmp_path / "venv"), "anomaly_attn must come from the wheel"

    run([str(python), "-m", "anomaly_attn.train", *tiny_overrides()], workdir, env)
    (metrics_file,) = (workdir / "outputs").rglob("metrics.json")
    metrics = json.loads(metrics_file.read_text())
    version = wheel.name.split("-")[1]
    assert {k: metrics["provenance"][k] for k in ("version", "git_commit", "git_dirty")} == {
        "version": version, "git_commit": None, "git_dirty": None
    }
    assert len(metrics["provenance"]["config_digest"]) == len(metrics["provenance"]["code_digest"]) == 16
    assert 0.0 <= metrics["image_auroc"] <= 1.0

    assert run([str(python), "-m", "anomaly_attn", "--version"], workdir, env) == f"anomaly_attn {version}\n"
    layers = run([str(python), "-m", "anomaly_attn.layers"], workdir, env)
    assert layers.startswith("model=conv_ae image_size=64")
    # The console script, with a user's config folder next to the packaged configs.
    env["ANOMALY_ATTN_CONFIG_DIR"] = str(user_config_dir(tmp_path / "my_conf"))
    layers = run([str(python.parent / "anomaly-attn-layers"), "dataset=textures_96"], workdir, env)
    assert layers.startswith("model=conv_ae image_size=96")
    assert sorted(p.name for p in workdir.iterdir()) == ["outputs"]


@pytest.mark.slow
def test_editable_install_reads_the_source_trees_conf(tmp_path: Path) -> None:
    sources = copy_sources(tmp_path / "src")
    # The PEP 660 hook that `pip install -e` calls, run here because the new environment has no setuptools
    # until the dependencies are borrowed (and borrowing first would show pip the running anomaly_attn).
    build = "import sys; from setuptools import build_meta; build_meta.build_editable(sys.argv[1])"
    command = [sys.executable, "-c", build, str(tmp_path / "dist")]
    subprocess.run(command, cwd=sources, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("anomaly_attn-*.editable-*.whl")
    python = make_venv(tmp_path / "venv")
    pip("--python", str(python), "install", "--no-deps", "--no-index", str(wheel))
    borrow_dependencies(python)
    workdir = tmp_path / "empty"
    workdir.mkdir()
    env = user_env(tmp_path)

    overview = run([str(python.parent / "anomaly-attn")], workdir, env)
    assert f"configs: {sources / 'conf'} " in overview
    assert "anomaly-attn-train" in overview
    # A yaml new in the tree is used without reinstalling.
    (sources / "conf" / "dataset" / "textures_96.yaml").write_text(TEXTURES_96)
    layers = run([str(python.parent / "anomaly-attn-layers"), "dataset=textures_96"], workdir, env)
    assert layers.startswith("model=conv_ae image_size=96")
