"""The project explains itself: every pointer to a documentation page names a file inside the repository.

Scanned: the package's sources (docstrings and comments included), the Hydra configs, the top-level
Markdown files and ``docs/*.md``. A *documentation pointer* is a Markdown link to a ``.md`` file, or a
path ending in ``.md`` whose file name is upper case (``README.md``, ``docs/METHOD.md``: the repository's
convention for its pages) or that starts with ``docs/`` or climbs with ``..``. Lower-case names such as
``summary.md`` or ``report/table.md`` are files a run writes, not pages, and are not checked. URLs are
skipped. A pointer resolves against the repository root or against the folder of the file that holds it,
and must land on an existing file inside the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED_GLOBS = ("anomaly_attn/**/*.py", "conf/**/*.yaml", "*.md", "docs/*.md")
METHOD_PAGE = REPO / "docs" / "METHOD.md"
OUTSIDE_POINTER = "../shared"

METHOD_SECTIONS = (
    "Task",
    "Model",
    "Backbones",
    "Training",
    "Gradient attention",
    "Control maps",
    "Fusion, smoothing and image scores",
    "Validation with synthetic anomalies",
    "Choosing the map",
    "Metrics",
    "Datasets",
    "Known defects of the research code",
    "Measured so far",
    "Judging an explanation",
    "References",
)

_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_MARKDOWN_LINK = re.compile(r"\]\(\s*([^)\s#]+\.md)(?:#[^)\s]*)?\s*\)")
_MD_PATH = re.compile(r"(?<![\w./-])([\w./-]*\.md)(?![\w-])")
_UPPER_CASE_PAGE = re.compile(r"^[A-Z][A-Z0-9_-]*\.md$")
_SECTION_POINTER = re.compile(r"docs/METHOD\.md`?,\s*\"([^\"]+)\"")


def _scanned_files() -> list[Path]:
    files = {path for pattern in SCANNED_GLOBS for path in REPO.glob(pattern) if path.is_file()}
    return sorted(files)


def _is_page_pointer(token: str) -> bool:
    return bool(
        _UPPER_CASE_PAGE.match(Path(token).name) or token.startswith("docs/") or ".." in Path(token).parts
    )


def _resolves_inside_repo(token: str, holder: Path) -> bool:
    for base in (REPO, holder.parent):
        target = (base / token).resolve()
        if target.is_relative_to(REPO) and target.is_file():
            return True
    return False


def _pointers(text: str) -> list[tuple[int, str]]:
    """``(line number, path)`` of every documentation pointer in ``text``."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = _URL.sub(" ", line)
        tokens = set(_MARKDOWN_LINK.findall(line))
        tokens |= {token for token in _MD_PATH.findall(line) if _is_page_pointer(token)}
        found.extend((number, token) for token in sorted(tokens))
    return found


def _headings(page: Path) -> list[str]:
    lines = page.read_text(encoding="utf-8").splitlines()
    return [line.lstrip("#").strip() for line in lines if line.startswith("##")]


def test_the_scan_sees_the_project() -> None:
    names = {path.relative_to(REPO).as_posix() for path in _scanned_files()}
    assert {"README.md", "anomaly_attn/maps/gradient.py", "conf/config.yaml"} <= names
    assert not any(name.startswith(".venv") for name in names)


def test_every_documentation_pointer_resolves_inside_the_repository() -> None:
    broken = [
        f"{path.relative_to(REPO)}:{number}: {token}"
        for path in _scanned_files()
        for number, token in _pointers(path.read_text(encoding="utf-8"))
        if not _resolves_inside_repo(token, path)
    ]
    assert not broken, "pointers to pages that are not in the repository:\n" + "\n".join(broken)


def test_no_text_points_at_the_shared_folder_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in _scanned_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if OUTSIDE_POINTER in line
    ]
    assert not offenders, f"{OUTSIDE_POINTER!r} named in:\n" + "\n".join(offenders)


def test_the_method_page_is_in_the_repository_with_its_sections() -> None:
    assert METHOD_PAGE.is_file(), "docs/METHOD.md is missing"
    headings = _headings(METHOD_PAGE)
    missing = [section for section in METHOD_SECTIONS if section not in headings]
    assert not missing, f"docs/METHOD.md lacks the sections {missing}; it has {headings}"


def test_every_section_a_pointer_names_exists() -> None:
    headings = set(_headings(METHOD_PAGE)) if METHOD_PAGE.is_file() else set()
    unknown = [
        f"{path.relative_to(REPO)}: {section!r}"
        for path in _scanned_files()
        for section in (" ".join(name.split()) for name in _SECTION_POINTER.findall(path.read_text("utf-8")))
        if section not in headings
    ]
    assert not unknown, "sections of docs/METHOD.md that do not exist:\n" + "\n".join(unknown)


def test_the_checks_catch_what_they_are_for() -> None:
    text = (
        "see METHOD.md, and `../shared/METHOD.md`, `docs/METHOD.md` and [maps](MAPS.md); "
        "writes report/summary.md; https://example.org/README.md"
    )
    assert sorted(token for _, token in _pointers(text)) == sorted(
        ["../shared/METHOD.md", "METHOD.md", "MAPS.md", "docs/METHOD.md"]
    )
    holder = REPO / "anomaly_attn" / "maps" / "gradient.py"
    assert not _resolves_inside_repo("METHOD.md", holder)
    assert not _resolves_inside_repo("../shared/METHOD.md", REPO / "README.md")
    assert not _resolves_inside_repo("/etc/hostname.md", holder)
    assert _resolves_inside_repo("MAPS.md", REPO / "docs" / "ARCHITECTURE.md")
    assert _resolves_inside_repo("docs/MAPS.md", holder)
