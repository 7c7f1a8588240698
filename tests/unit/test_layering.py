"""docs/ARCHITECTURE.md's layering, enforced: the import-linter contracts in pyproject.toml run here, and
every room (subpackage of anomaly_attn) is placed in the layers contract, so a new room cannot escape it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

importlinter_cli = pytest.importorskip("importlinter.cli", reason="import-linter is in the dev extra")
grimp = pytest.importorskip("grimp", reason="import-linter (dev extra) brings grimp")
try:
    import tomllib
except ImportError:  # Python 3.10: import-linter brings tomli
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "anomaly_attn"


def _contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_every_room_is_in_the_layers_contract() -> None:
    (layers,) = [c for c in _contracts() if c["type"] == "layers"]
    listed = {name.strip() for layer in layers["layers"] for name in layer.split("|")}
    rooms = {f"anomaly_attn.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    rooms.discard("anomaly_attn.conf")  # an installed wheel's configs, not code
    assert rooms == listed, f"rooms missing from pyproject's layers contract: {sorted(rooms - listed)}"


@pytest.fixture(autouse=True)
def loggers_left_as_they_were() -> Iterator[None]:
    """import-linter configures logging and disables every logger that existed before; later tests read
    the package's own records (caplog), so each logger's state is put back."""
    existing = logging.root.manager.loggerDict.values()
    loggers = [logger for logger in existing if isinstance(logger, logging.Logger)]
    disabled = [logger.disabled for logger in loggers]
    yield
    for logger, was_disabled in zip(loggers, disabled, strict=True):
        logger.disabled = was_disabled


def test_the_import_contracts_hold(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(REPO)
    status = importlinter_cli.lint_imports(no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert status == importlinter_cli.EXIT_STATUS_SUCCESS, out
    assert "0 broken" in out and f"{len(_contracts())} kept" in out, out


def test_a_broken_contract_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The check can fail: a contract that inverts two rooms (engine below maps) is reported broken."""
    config = tmp_path / "inverted.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "anomaly_attn"\n\n[[tool.importlinter.contracts]]\n'
        'id = "inverted"\nname = "inverted"\ntype = "layers"\n'
        'layers = ["anomaly_attn.maps", "anomaly_attn.training"]\n'
    )
    monkeypatch.chdir(REPO)
    status = importlinter_cli.lint_imports(config_filename=str(config), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert status != importlinter_cli.EXIT_STATUS_SUCCESS and "BROKEN" in out, out


ROOMS_LISTED_FILE_BY_FILE = {
    "cli", "jobs", "run", "training", "classical", "reporting", "maps", "config", "common"
}


def test_architecture_md_names_every_room_and_module() -> None:
    """docs/ARCHITECTURE.md's tree says where a change goes: every room, and every module of the rooms it
    lists file by file (a module added without a line there fails here)."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    tree = text.split("```\nanomaly_attn/\n", 1)[1].split("```", 1)[0]
    missing = []
    for room in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file() and p.name != "conf"):
        if f"  {room.name}/" not in tree:
            missing.append(f"{room.name}/")
        if room.name in ROOMS_LISTED_FILE_BY_FILE:
            for module in sorted(room.glob("*.py")):
                named = f"{module.name}" in tree or (room.name == "cli" and f" {module.stem} " in tree)
                if module.stem != "__init__" and not named:
                    missing.append(f"{room.name}/{module.name}")
    assert not missing, f"docs/ARCHITECTURE.md's tree does not name: {missing}"


def test_no_module_imports_itself_back() -> None:
    """No import loop inside the package, function-level imports included (config/extensions <->
    config/safety and data/disk_cache <-> data/layout were two): a loop means two modules share one
    concern."""
    graph = grimp.build_graph("anomaly_attn", include_external_packages=False)
    loops = sorted(
        {
            tuple(sorted((importer, imported)))
            for importer in graph.modules
            for imported in graph.find_modules_directly_imported_by(importer)
            if imported != importer and graph.find_shortest_chain(importer=imported, imported=importer)
        }
    )
    assert loops == [], loops


def _package_names() -> tuple[set[str], set[str]]:
    """(names defined in the package: functions, classes, methods, attributes, arguments, module names;
    string constants used in it)."""
    import ast

    defined: set[str] = set()
    strings: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        defined.add(path.stem)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Attribute):
                defined.add(node.attr)
            elif isinstance(node, ast.Name):
                defined.add(node.id)
            elif isinstance(node, ast.arg):
                defined.add(node.arg)
            elif isinstance(node, ast.keyword) and node.arg:
                defined.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value)
    return defined, strings


def _quoted_code(text: str) -> list[str]:
    """Backticked names in ``text``: calls (``calibrate(val_batches)``: ``calibrate``), dotted names
    (``MapEngine.from_checkpoint``: every part) and single identifiers; prose and shapes are skipped."""
    import re

    names = []
    for quoted in re.findall(r"`([^`]+)`", text):
        head = re.match(r"[A-Za-z_][A-Za-z0-9_.]*", quoted)
        if head is None or (head.end() < len(quoted) and quoted[head.end()] not in "(["):
            continue  # `C×H×W`, `B×1×H×W`, `good` for ..., a phrase
        names.extend(part for part in head.group().split(".") if part and part != "py" and not part.isdigit())
    return names


def test_architecture_md_interfaces_name_what_the_code_has() -> None:
    """Every function, class, method, attribute and key that docs/ARCHITECTURE.md's interface sections
    (from "## Samples" on) quote exists in the package: as a definition, an attribute or argument, or a
    string key. A renamed function or key fails here until the page follows."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text().split("## Samples", 1)[1]
    defined, strings = _package_names()
    missing = sorted({name for name in _quoted_code(text) if name not in defined and name not in strings})
    assert not missing, f"docs/ARCHITECTURE.md quotes names the package lacks: {missing}"


def test_the_interface_check_catches_a_stale_name() -> None:
    defined, strings = _package_names()
    names = _quoted_code("`compute_maps(images)` under `selected`; `MapEngine.no_such_method(x)`, `C×H×W`")
    assert names == ["compute_maps", "selected", "MapEngine", "no_such_method"]
    assert [n for n in names if n not in defined and n not in strings] == ["no_such_method"]
