"""Open a local HTML file in a real headless Chromium (Debian's, driven by Playwright) and record what
went wrong: console errors, uncaught page errors and failed resource loads."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# The flags Chromium needs as root on a machine without a network (no sandbox, no GPU, no calls home).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_or_skip() -> str:
    """The system Chromium's path ($ANOMALY_ATTN_CHROMIUM, else `chromium` on PATH); skips the test,
    saying what to install, only when there is no such binary. With a Chromium present, a missing
    Playwright fails the test: a browser check that silently skips on a machine meant to run it would
    hide a broken page. Playwright's own browser download is never used."""
    executable = os.environ.get("ANOMALY_ATTN_CHROMIUM") or shutil.which("chromium")
    if not executable or not Path(executable).exists():
        pytest.skip(
            "no headless browser: install Debian's chromium (`apt-get install -y chromium`) or set "
            "ANOMALY_ATTN_CHROMIUM to a Chromium binary"
        )
    if importlib.util.find_spec("playwright") is None:
        pytest.fail(f"{executable} is installed but Playwright is not: `pip install playwright`")
    return executable


@dataclass
class PageProblems:
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        return [*self.console_errors, *self.page_errors, *self.failed_requests, *self.dialogs]


@contextmanager
def open_page(path: Path, width: int = 1280) -> Iterator[tuple[Any, PageProblems]]:
    """Yield (Playwright page, problems so far) for ``path`` loaded over file://, in headless Chromium."""
    from playwright.sync_api import sync_playwright

    executable = chromium_or_skip()
    problems = PageProblems()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on(
                "console",
                lambda message: (
                    problems.console_errors.append(message.text) if message.type == "error" else None
                ),
            )
            page.on("pageerror", lambda error: problems.page_errors.append(str(error)))
            page.on("requestfailed", lambda request: problems.failed_requests.append(request.url[:200]))
            page.on("dialog", lambda dialog: (problems.dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(path.resolve().as_uri(), wait_until="load")
            yield page, problems
        finally:
            browser.close()
