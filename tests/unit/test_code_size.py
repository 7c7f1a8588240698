"""Size limits of the package's code, enforced: no function over 80 lines, no file over 450 lines unless
docs/ARCHITECTURE.md says why, and no block of 6 or more lines repeated (pylint's duplicate-code).

Each check is shown able to fail on a made-up case, so a passing run means something.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "anomaly_attn"
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"

MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 450
MIN_SIMILARITY_LINES = 6

# Files allowed over MAX_FILE_LINES: path relative to the repository -> the sentence of docs/ARCHITECTURE.md
# that says why, quoted word for word (a test checks that it is there).
FILE_SIZE_ALLOWLIST: dict[str, str] = {}


def package_files() -> list[Path]:
    """Every Python file of the package, the ``conf`` folder (configs shipped in the wheel) left out."""
    return sorted(path for path in PACKAGE.rglob("*.py") if "conf" not in path.relative_to(PACKAGE).parts)


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """``(qualified name, def line, length)`` of every function or method of ``source`` (nested ones
    included) longer than ``limit`` lines, counted from its ``def`` line to its last line (decorators
    excluded)."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = child.end_lineno - child.lineno + 1
                if length > limit:
                    found.append((prefix + child.name, child.lineno, length))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _pylint_duplicate_code(target: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "pylint", "--disable=all", "--enable=duplicate-code",
        f"--min-similarity-lines={MIN_SIMILARITY_LINES}", target,
    ]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def test_no_function_is_longer_than_80_lines() -> None:
    too_long = [
        f"{path.relative_to(REPO)}:{line} {name}: {length} lines"
        for path in package_files()
        for name, line, length in long_functions(path.read_text(encoding="utf-8"))
    ]
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(too_long)


def test_no_file_is_longer_than_450_lines_unless_allowlisted() -> None:
    too_long = []
    for path in package_files():
        relative = path.relative_to(REPO).as_posix()
        num_lines = len(path.read_text(encoding="utf-8").splitlines())
        if num_lines > MAX_FILE_LINES and relative not in FILE_SIZE_ALLOWLIST:
            too_long.append(f"{relative}: {num_lines} lines")
    assert not too_long, (
        f"files over {MAX_FILE_LINES} lines (split them by concern, or add them to FILE_SIZE_ALLOWLIST "
        "with the sentence of docs/ARCHITECTURE.md that says why):\n" + "\n".join(too_long)
    )


def test_every_allowlisted_file_exists_and_is_justified_in_architecture_md() -> None:
    architecture = _one_line(ARCHITECTURE.read_text(encoding="utf-8"))
    missing_files = [relative for relative in FILE_SIZE_ALLOWLIST if not (REPO / relative).is_file()]
    unjustified = [
        f"{relative}: {justification!r}"
        for relative, justification in FILE_SIZE_ALLOWLIST.items()
        if _one_line(justification) not in architecture
    ]
    assert not missing_files, f"allowlisted files that do not exist: {missing_files}"
    assert not unjustified, "justifications not found in docs/ARCHITECTURE.md:\n" + "\n".join(unjustified)


def test_no_code_is_duplicated() -> None:
    pytest.importorskip("pylint", reason="pylint is in the dev extra")
    result = _pylint_duplicate_code("anomaly_attn", REPO)
    assert result.returncode == 0, f"pylint duplicate-code:\n{result.stdout}{result.stderr}"


def _function_source(name: str, num_lines: int) -> str:
    """A function of exactly ``num_lines`` lines, its ``def`` line included."""
    body = [f"    value = {i}" for i in range(num_lines - 2)]
    return "\n".join([f"def {name}():", *body, "    return value"]) + "\n"


def test_the_function_length_check_can_fail() -> None:
    """An 81-line method is reported; an 80-line function is not, whatever decorates it."""
    source = (
        "@staticmethod\n@property\n" + _function_source("just_fits", 80) + "\n\nclass Holder:\n"
        + textwrap.indent(_function_source("too_long", 81), "    ")
    )
    assert long_functions(source) == [("Holder.too_long", 86, 81)]


def test_the_duplicate_code_check_can_fail(tmp_path: Path) -> None:
    """Two identical 8-line functions in two files of a package are reported as duplicate code."""
    pytest.importorskip("pylint", reason="pylint is in the dev extra")
    package = tmp_path / "twins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    lines = ["def total(values):", "    result = 0"]
    lines += [f"    result += values[{i}] * {i + 3}" for i in range(5)] + ["    return result"]
    assert len(lines) == 8
    for name in ("first.py", "second.py"):
        (package / name).write_text("\n".join(lines) + "\n")
    result = _pylint_duplicate_code("twins", tmp_path)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "duplicate-code" in result.stdout and "twins.first" in result.stdout, result.stdout
