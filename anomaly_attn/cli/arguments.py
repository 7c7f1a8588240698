"""Shared command-line plumbing for the Hydra entry points."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from anomaly_attn.cli.sweeps import SweepError, expand_sweep_overrides
from anomaly_attn.config.paths import split_command_line, with_user_config_dirs
from anomaly_attn.config.safety import check_config, check_no_secret_overrides


def run_hydra_app(app: Callable[[], object], config_name: str = "config") -> None:
    """Add ``$ANOMALY_ATTN_CONFIG_DIR`` to the config search path, expand category/layer globs against the
    chosen dataset/model, then hand over to Hydra.

    ``config_name`` is the app's primary config (e.g. ``evaluate``). Bad names fail here, before any job
    starts, with the list of valid ones.
    """
    try:
        check_no_secret_overrides(sys.argv[1:])
        args = check_parses(quote_path_arguments(sys.argv[1:]))
        args = with_user_config_dirs(args)
        check_composed_config(args, config_name)
        sys.argv = [sys.argv[0], *expand_sweep_overrides(args, config_name=config_name)]
    except (SweepError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    app()


# Keys whose values are file-system paths. The framework's own sweep folders are named by their overrides
# (``.../multirun/category=brick,layer=encoder.14/``), and ``=``, ``,`` or a space break Hydra's override
# grammar; such a value is quoted for the user when it names an existing path or does not parse as it is.
PATH_KEYS = frozenset(
    {
        "ckpt_path",
        "input_dir",
        "output_dir",
        "dataset.root",
        "paths.output_dir",
        "paths.data_dir",
        "hydra.run.dir",
        "hydra.sweep.dir",
    }
)


def _hydra_quote(value: str) -> str:
    """``value`` as a Hydra quoted string (single quotes; inner quotes escaped)."""
    return "'" + value.replace("'", "\\'") + "'"


def _parse(override: str):
    """The parsed override, or None when Hydra's grammar refuses it."""
    try:
        return OverridesParser.create().parse_override(override)
    except HydraException:
        return None


def quote_path_arguments(args: list[str]) -> list[str]:
    """Quote path-valued overrides (``PATH_KEYS``) that Hydra would misread: a value holding ``=``,
    ``,``, spaces or brackets that names an existing path, or that does not parse at all. A comma list
    of paths that do not exist as one path stays a sweep (``ckpt_path=a.ckpt,b.ckpt``)."""
    flags, overrides, _ = split_command_line(args)
    out = []
    for override in overrides:
        key, sep, value = override.partition("=")
        bare_key = key.lstrip("+~")
        if sep and bare_key in PATH_KEYS and value and value[0] not in "'\"":
            parsed = _parse(override)
            as_itself = parsed is not None and not parsed.is_sweep_override() and parsed.value() == value
            if not as_itself and (parsed is None or Path(value).expanduser().exists()):
                override = f"{key}={_hydra_quote(value)}"
        out.append(override)
    return [*out, *flags]


def check_parses(args: list[str]) -> list[str]:
    """Parse every override now, so a bad one is reported by name with the quoting that works, not as a
    traceback from inside Hydra."""
    _, overrides, _ = split_command_line(args)
    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except HydraException as error:
            key, sep, value = override.partition("=")
            fix = f"{key}={_hydra_quote(value)}" if sep else override
            raise ValueError(
                f"cannot parse the argument {override!r}: {str(error).strip().splitlines()[0]}\n"
                f"Hydra reserves = , [ ] {{ }} ( ) quotes and spaces in values. Quote the value, e.g. "
                f"\"{fix}\" (the outer double quotes are for the shell)."
            ) from None
    return args


def check_composed_config(args: list[str], config_name: str) -> None:
    """Compose the config as Hydra will (sweep values left out: each job checks its own) and refuse any
    ``_target_`` it may not instantiate, Hydra's callbacks, launcher and sweeper included, before Hydra
    instantiates any of them. A config that does not compose is left to Hydra to report."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from anomaly_attn.config.paths import CONFIG_DIR

    _, overrides, config_name = split_command_line(args, config_name)
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=fixed, return_hydra_config=True)
    except Exception:  # e.g. a missing config group: Hydra reports it properly next
        return
    finally:
        GlobalHydra.instance().clear()
    check_config(cfg)
