"""Shared command-line plumbing for the Hydra entry points."""

from __future__ import annotations

import sys
from collections.abc import Callable

from anomaly_attn.sweeps import SweepError, expand_sweep_overrides


def run_hydra_app(app: Callable[[], object]) -> None:
    """Expand category/layer globs against the chosen dataset/model, then hand over to Hydra.

    Bad names fail here, before any job starts, with the list of valid ones.
    """
    try:
        sys.argv = [sys.argv[0], *expand_sweep_overrides(sys.argv[1:])]
    except (SweepError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    app()
