"""Shared command-line plumbing for the Hydra entry points."""

from __future__ import annotations

import sys
from collections.abc import Callable

from anomaly_attn.configs import with_user_config_dirs
from anomaly_attn.safety import check_no_secret_overrides
from anomaly_attn.sweeps import SweepError, expand_sweep_overrides


def run_hydra_app(app: Callable[[], object], config_name: str = "config") -> None:
    """Add ``$ANOMALY_ATTN_CONFIG_DIR`` to the config search path, expand category/layer globs against the
    chosen dataset/model, then hand over to Hydra.

    ``config_name`` is the app's primary config (e.g. ``evaluate``). Bad names fail here, before any job
    starts, with the list of valid ones.
    """
    try:
        check_no_secret_overrides(sys.argv[1:])
        args = with_user_config_dirs(sys.argv[1:])
        sys.argv = [sys.argv[0], *expand_sweep_overrides(args, config_name=config_name)]
    except (SweepError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    app()
