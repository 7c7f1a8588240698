"""One screen per error: the culprit and the fix, a non-zero exit, and no stack trace unless asked.

Every entry point reports a failure as ``error: <message>`` on stderr. The traceback of a failed job is
never lost: it is in the job's ``error.txt`` (``cli/jobs.py``), and ``HYDRA_FULL_ERROR=1`` or ``--debug``
on the command line prints it on the screen instead.

Kept free of torch/Lightning imports: the entry points import it before any job starts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

DEBUG_FLAG = "--debug"
# Set by --debug for this process and the jobs it starts (joblib, submitit workers inherit it).
DEBUG_ENV = "ANOMALY_ATTN_DEBUG"

# Errors whose message is written for the user (what is wrong, what to do); any other type is named too,
# since the message alone (e.g. a KeyError's key) would not say what happened.
_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def take_debug_flag(argv: list[str]) -> list[str]:
    """``argv`` without ``--debug`` (Hydra would refuse it); the flag sets ``ANOMALY_ATTN_DEBUG=1``."""
    if DEBUG_FLAG in argv:
        os.environ[DEBUG_ENV] = "1"
    return [argument for argument in argv if argument != DEBUG_FLAG]


def debug_requested() -> bool:
    """True when the user asked for full tracebacks (``HYDRA_FULL_ERROR=1`` or ``--debug``)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get(DEBUG_ENV) == "1"


def describe(error: BaseException) -> str:
    """The message a user reads: the error's own text, prefixed by its type unless it is a user error."""
    text = str(error).strip()
    if isinstance(error, _USER_ERRORS) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def print_error(message: str, details: Path | None = None) -> None:
    """``error: message`` on stderr, and where the traceback is when there is one."""
    print(f"error: {message}", file=sys.stderr)
    if details is not None:
        print(f"(traceback in {details}; {DEBUG_FLAG} or HYDRA_FULL_ERROR=1 prints it here)", file=sys.stderr)


def exit_with_error(error: BaseException, details: Path | None = None, code: int = 1) -> NoReturn:
    """Print ``error`` on one screen and exit with ``code`` (a ``SystemExit``, which Hydra lets through)."""
    print_error(describe(error), details)
    sys.stdout.flush()
    raise SystemExit(code) from None
