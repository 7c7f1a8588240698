"""Shared command-line plumbing for the Hydra entry points."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.cli.errors import debug_requested, exit_with_error, take_debug_flag
from anomaly_attn.cli.preflight import preflight
from anomaly_attn.cli.quiet import take_verbose_flag
from anomaly_attn.cli.sweeps import SweepError, expand_sweep_overrides
from anomaly_attn.config.paths import split_command_line, with_user_config_dirs
from anomaly_attn.config.safety import check_no_secret_overrides


def run_category(*, _root_: DictConfig) -> str:
    """``${anomaly_attn.category:}``, the run folder's category (conf/hydra/default.yaml): the configured
    one, or the dataset's first when ``category`` is null, never ``None``."""
    category = _root_.get("category")
    if category is not None:
        return str(category)
    from anomaly_attn.data.build import build_dataset

    try:
        return str(build_dataset(_root_).categories()[0])
    except Exception:  # a dataset that cannot list its categories: the job itself reports why, by name
        return "default"


OmegaConf.register_new_resolver("anomaly_attn.category", run_category, replace=True)


# Names renamed in 0.2, accepted in 0.2 with a note (to be dropped in 0.3): the config group that
# chooses a map (attention -> map), the research code's map variant and schedule preset.
RENAMED_GROUPS = {"attention": "map"}
RENAMED_VALUES = {("map", "seed"): "mean_abs_cam", ("map.variant", "seed"): "mean_abs_cam",
                  ("experiment", "seed_repro"): "research_schedule"}


def renamed_group(argument: str, old: str, new: str) -> str:
    """``argument`` with the config group/key ``old`` spelt ``new`` (``old=x``, ``old.k=v``, ``+old.k=v``,
    ``~old.k``); anything else unchanged."""
    prefix = argument[: len(argument) - len(argument.lstrip("+~"))]
    rest = argument[len(prefix) :]
    for separator in ("=", "."):
        if rest.startswith(old + separator):
            return prefix + new + rest[len(old) :]
    return argument


def translate_renamed(args: list[str]) -> list[str]:
    """Overrides in today's names (RENAMED_GROUPS, RENAMED_VALUES), with one note on stderr per rename."""
    translated = []
    for argument in args:
        new = argument
        for old_group, new_group in RENAMED_GROUPS.items():
            new = renamed_group(new, old_group, new_group)
        key, _, value = new.partition("=")
        values = [RENAMED_VALUES.get((key.lstrip("+~"), v), v) for v in value.split(",")]
        new = f"{key}={','.join(values)}" if _ else new
        if new != argument:
            print(f"note: {argument!r} is now spelt {new!r} (the old name works in 0.2 and goes in 0.3).",
                  file=sys.stderr)
        translated.append(new)
    return translated


def run_hydra_app(app: Callable[[], object], config_name: str = "config") -> None:
    """Add ``$ANOMALY_ATTN_CONFIG_DIR`` to the config search path, expand category/layer globs against the
    chosen dataset/model, then hand over to Hydra.

    ``config_name`` is the app's primary config (e.g. ``evaluate``). Bad names and values fail here, before
    any job starts, with the list of valid ones (``cli/preflight.py``), on one screen (``cli/errors.py``;
    ``--debug`` shows the traceback). ``--verbose`` shows the third-party messages ``cli/quiet.py`` drops.
    """
    args = translate_renamed(take_verbose_flag(take_debug_flag(sys.argv[1:])))
    try:
        check_no_secret_overrides(args)
        args = check_parses(quote_path_arguments(args))
        args = with_user_config_dirs(args)
        if not _asks_hydra_for_help(args):
            preflight(args, config_name)
            args = expand_sweep_overrides(args, config_name=config_name)
    except (SweepError, ValueError, FileNotFoundError) as error:
        if debug_requested():
            traceback.print_exc()
        exit_with_error(error, code=2)
    sys.argv = [sys.argv[0], *args]
    app()


def _asks_hydra_for_help(args: list[str]) -> bool:
    """``--help``, ``--hydra-help``, ``--info`` or ``--cfg``: Hydra answers them without running a job."""
    flags, _, _ = split_command_line(args)
    return any(flag in ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c") for flag in flags)


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
