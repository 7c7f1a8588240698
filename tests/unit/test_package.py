"""Version, provenance, where configs are found, and users' own config folders."""

from __future__ import annotations

import os
import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

import anomaly_attn
from anomaly_attn.cli.layers import main as layers_main
from anomaly_attn.cli.sweeps import expand_sweep_overrides
from anomaly_attn.config.paths import (
    CONFIG_DIR,
    CONFIG_DIR_ENV,
    find_config_dir,
    user_config_dirs,
    with_user_config_dirs,
)
from anomaly_attn.version import UNKNOWN_VERSION, git_revision, installed_version, provenance
from tests.conftest import REPO, compose_cfg, run_cli

# A user's variant of a packaged dataset, in a folder laid out like conf/.
TEXTURES_96 = """\
defaults:
  - textures
  - _self_
image_size: 96
"""


def user_config_dir(root: Path) -> Path:
    """A config folder with ``dataset/textures_96.yaml`` and a ``dataset/textures.yaml`` that tries to
    shadow the packaged one."""
    (root / "dataset").mkdir(parents=True)
    (root / "dataset" / "textures_96.yaml").write_text(TEXTURES_96)
    (root / "dataset" / "textures.yaml").write_text("name: shadow\nroot: /nowhere\n")
    return root


def git(cwd: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args]
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


# --- version ---------------------------------------------------------------------------------------------


def test_version_is_the_installed_distributions_and_falls_back_when_not_installed() -> None:
    assert anomaly_attn.__version__ == installed_version() == metadata.version("anomaly_attn")
    assert installed_version("anomaly_attn_was_never_installed") == UNKNOWN_VERSION == "0+unknown"


def test_python_m_anomaly_attn_version_and_overview(tmp_path: Path) -> None:
    version = run_cli(["--version"], cwd=tmp_path, module="anomaly_attn", timeout=120)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"anomaly_attn {anomaly_attn.__version__}"

    overview = run_cli([], cwd=tmp_path, module="anomaly_attn", timeout=120)
    assert overview.returncode == 0, overview.stderr
    assert overview.stdout.splitlines()[0] == f"anomaly_attn {anomaly_attn.__version__}"
    assert f"configs: {CONFIG_DIR} " in overview.stdout


# --- provenance ------------------------------------------------------------------------------------------


def test_provenance_names_this_checkouts_commit() -> None:
    record = provenance()
    assert set(record) == {"version", "git_commit", "git_dirty"}
    assert record["version"] == anomaly_attn.__version__
    try:
        head = git(REPO, "rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        head = None  # the tests run from an unpacked sdist: no commit to report
    assert record["git_commit"] == head
    assert isinstance(record["git_dirty"], bool) == (head is not None)


def test_git_revision_of_a_project_checkout_tracks_commit_and_dirtiness(tmp_path: Path) -> None:
    package = tmp_path / "anomaly_attn"
    package.mkdir()
    (package / "__init__.py").write_text("")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "init")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert git_revision(package) == (head, False)
    (package / "__init__.py").write_text("changed = True\n")
    assert git_revision(package) == (head, True)
    (tmp_path / "untracked.txt").write_text("not part of the code")
    (package / "__init__.py").write_text("")
    assert git_revision(package) == (head, False)


def test_git_revision_is_none_outside_a_checkout_of_this_project(tmp_path: Path) -> None:
    # Not a repository at all.
    (tmp_path / "plain" / "anomaly_attn").mkdir(parents=True)
    assert git_revision(tmp_path / "plain" / "anomaly_attn") == (None, None)
    # A wheel installed into a venv that sits inside some other repository: not that repository's commit.
    repo = tmp_path / "other"
    site_package = repo / ".venv" / "lib" / "site-packages" / "anomaly_attn"
    site_package.mkdir(parents=True)
    git(repo, "init", "-q")
    git(repo, "commit", "-q", "--allow-empty", "-m", "init")
    assert git_revision(site_package) == (None, None)


def test_provenance_never_fails_without_git(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    assert provenance() == {"version": anomaly_attn.__version__, "git_commit": None, "git_dirty": None}


# --- where the configs are -------------------------------------------------------------------------------


def test_configs_are_the_repositorys_conf_when_running_from_a_clone() -> None:
    assert CONFIG_DIR == REPO / "conf"
    assert find_config_dir() == CONFIG_DIR


def test_an_installed_package_prefers_its_own_conf(tmp_path: Path) -> None:
    package = tmp_path / "site-packages" / "anomaly_attn"
    for folder in (package / "conf", tmp_path / "site-packages" / "conf"):  # the second: another project's
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("{}\n")
    assert find_config_dir(package) == package / "conf"


def test_missing_configs_name_both_places_and_the_fix(tmp_path: Path) -> None:
    package = tmp_path / "anomaly_attn"
    package.mkdir()
    with pytest.raises(FileNotFoundError, match="pip install") as error:
        find_config_dir(package)
    assert str(package / "conf") in str(error.value)
    assert str(tmp_path / "conf") in str(error.value)


# --- users' config folders -------------------------------------------------------------------------------


def test_without_the_variable_the_command_line_is_unchanged() -> None:
    args = ["-m", "dataset=textures", "category=glob(*)"]
    assert with_user_config_dirs(args, environ={}) == args
    assert with_user_config_dirs(args, environ={CONFIG_DIR_ENV: ""}) == args


def test_env_folder_adds_options_but_packaged_names_keep_the_packages_file(tmp_path: Path) -> None:
    folder = user_config_dir(tmp_path / "my conf, v2 [x]")  # spaces, comma, brackets survive the quoting
    environ = {CONFIG_DIR_ENV: str(folder)}
    cfg = compose_cfg(with_user_config_dirs(["dataset=textures_96"], environ))
    assert (cfg.dataset.name, cfg.dataset.image_size) == ("textures", 96)
    assert cfg.dataset.crop_size == compose_cfg([]).dataset.crop_size  # the rest from the packaged file
    assert compose_cfg(with_user_config_dirs(["dataset=textures"], environ)).dataset.name == "textures"


def test_env_folders_merge_into_a_searchpath_on_the_command_line(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    args = ["-m", f"hydra.searchpath=[file://{first}]", "seed=1", "--config-name", "config"]
    result = with_user_config_dirs(args, environ={CONFIG_DIR_ENV: f"{second}{os.pathsep}{first}"})
    assert result == [
        "seed=1",
        f"hydra.searchpath=['file://{first}','file://{second}']",
        "-m",
        "--config-name",
        "config",
    ]


def test_a_missing_env_folder_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{CONFIG_DIR_ENV} names '{tmp_path / 'nope'}'")):
        user_config_dirs({CONFIG_DIR_ENV: str(tmp_path / "nope")})


def test_category_glob_expands_against_a_users_dataset(tmp_path: Path) -> None:
    folder = user_config_dir(tmp_path / "conf")
    environ = {CONFIG_DIR_ENV: str(folder)}
    args = with_user_config_dirs(["dataset=textures_96", "category=glob(gr*)"], environ)
    assert "category=grass,gravel" in expand_sweep_overrides(args)


def test_hydra_searchpath_on_the_command_line_reaches_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = user_config_dir(tmp_path / "conf")
    assert layers_main([f"hydra.searchpath=[file://{folder}]", "dataset=textures_96"]) == 0
    assert capsys.readouterr().out.startswith("model=conv_ae image_size=96 ")


def test_env_folder_reaches_the_train_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(user_config_dir(tmp_path / "conf")))
    done = run_cli(["dataset=textures_96", "--cfg", "job"], cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "image_size: 96" in done.stdout
    assert not (tmp_path / "outputs").exists()  # --cfg prints the config and runs nothing


def test_python_m_anomaly_attn_lists_each_command_under_a_module_that_runs_it() -> None:
    """`python -m anomaly_attn` prints each console script with its `python -m` form; each such module
    runs the script's own function (the old `baselines` name included)."""
    import importlib

    from anomaly_attn.__main__ import console_scripts, module_of

    expected = {"anomaly-attn-train", "anomaly-attn-classical", "anomaly-attn-baselines"}
    assert expected <= set(console_scripts())
    for entry in metadata.entry_points(group="console_scripts"):
        if entry.name.startswith("anomaly-attn-"):
            module = importlib.import_module(module_of(entry.name))
            if hasattr(module, "__path__"):  # a package: python -m runs its __main__
                module = importlib.import_module(module.__name__ + ".__main__")
            assert module.main is entry.load(), entry.name
