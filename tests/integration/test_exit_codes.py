"""Exit statuses that hold: every command, in both forms a user types (``python -m anomaly_attn.X`` and the
installed console script), exits 0 on success and non-zero on an error, as subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from anomaly_attn.__main__ import console_scripts, module_of
from tests.conftest import user_env

# Per console script: arguments that succeed, and arguments that fail (with the status they fail with).
# "{ok}" is a folder of one complete run, "{bad}" one with a complete and a failed run.
COMMANDS: dict[str, tuple[list[str], list[str], int]] = {
    "anomaly-attn": (["--version"], ["cache", "--no-such-flag"], 2),
    "anomaly-attn-train": (["--help"], ["map=gradcamxx"], 2),
    "anomaly-attn-evaluate": (["--help"], ["logger=none"], 2),
    "anomaly-attn-predict": (["--help"], ["input_dir=."], 2),
    "anomaly-attn-report": (["{ok}", "--no-figures"], ["{bad}", "--no-figures"], 1),
    "anomaly-attn-layers": (["--help"], ["model.nam=unet"], 2),
    "anomaly-attn-classical": (["--help"], ["detector=knnn"], 2),
    "anomaly-attn-baselines": (["--help"], ["baseline=knnn"], 2),
}
REPORT_FAILURES = {
    "unknown metric": (["{ok}", "--metric", "pixel_aurocc", "--no-figures"], 2),
    "a job that failed before its config": (["{pre_config}", "--no-figures"], 1),
    "an unfinished run": (["{unfinished}", "--no-figures"], 1),
}


def _complete_run(run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("category: brick\nlayer: encoder.14\n")
    metrics = {"pixel_auroc": 0.9, "image_auroc": 0.8, "dataset": "textures", "category": "brick",
               "model": "conv_ae", "layer": "encoder.14", "experiment": "unit", "seed": 0}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("runs")
    _complete_run(root / "ok" / "category=brick")
    _complete_run(root / "bad" / "category=brick")
    failed = root / "bad" / "category=grass"
    failed.mkdir()
    (failed / "config.yaml").write_text("category: grass\n")
    (failed / "error.txt").write_text("RuntimeError: out of memory\n")
    _complete_run(root / "pre_config" / "category=brick")
    pre_config = root / "pre_config" / "map.variant=gradcamxx"
    pre_config.mkdir()
    (pre_config / "error.txt").write_text("ValueError: bad variant\n")
    _complete_run(root / "unfinished" / "category=brick")
    (root / "unfinished" / "category=grass").mkdir()
    (root / "unfinished" / "category=grass" / "config.yaml").write_text("category: grass\n")
    return {name: str(root / name) for name in ("ok", "bad", "pre_config", "unfinished")}


def _run(
    command: list[str], args: list[str], folders: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess:
    env = user_env()
    args = [arg.format(**folders) if arg.startswith("{") else arg for arg in args]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _forms(script: str) -> dict[str, list[str]]:
    """The two ways to run ``script``: its ``python -m`` module and the installed script next to python."""
    installed = Path(sys.executable).parent / script
    assert installed.exists(), f"{installed} is not installed: pip install -e . (make install) adds it"
    return {"python -m": [sys.executable, "-m", module_of(script)], "script": [str(installed)]}


def test_every_console_script_is_listed_here() -> None:
    assert set(console_scripts()) == set(COMMANDS)


@pytest.fixture(scope="module")
def outcomes(folders: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    cwd = tmp_path_factory.mktemp("cwd")
    jobs = {}
    for script, (good, bad, _) in COMMANDS.items():
        for form, command in _forms(script).items():
            jobs[(script, form, "success")] = (command, good)
            jobs[(script, form, "failure")] = (command, bad)
    for name, (args, _) in REPORT_FAILURES.items():
        for form, command in _forms("anomaly-attn-report").items():
            jobs[(name, form, "report")] = (command, args)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(_run, *job, folders, cwd) for key, job in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


@pytest.mark.parametrize("form", ["python -m", "script"])
@pytest.mark.parametrize("script", list(COMMANDS))
def test_success_exits_0_and_an_error_exits_non_zero(script: str, form: str, outcomes: dict) -> None:
    success, failure = outcomes[(script, form, "success")], outcomes[(script, form, "failure")]
    assert success.returncode == 0, success.stdout + success.stderr
    assert failure.returncode == COMMANDS[script][2], failure.stdout + failure.stderr
    assert "Traceback" not in failure.stdout + failure.stderr


@pytest.mark.parametrize("form", ["python -m", "script"])
@pytest.mark.parametrize("case", list(REPORT_FAILURES))
def test_report_exits_non_zero_on_failed_unfinished_and_unknown(case: str, form: str, outcomes: dict) -> None:
    result = outcomes[(case, form, "report")]
    assert result.returncode == REPORT_FAILURES[case][1], result.stdout + result.stderr
    assert "error: " in result.stderr
