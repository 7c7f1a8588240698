"""``python -m anomaly_attn [--version]``: the version, where the configs are, and the commands.

``python -m anomaly_attn cache [--info | --clear] [--dir DIR]`` shows or empties the decoded-image cache
(``anomaly_attn/data/disk_cache.py``).

The commands are read from the installed package's console scripts (pyproject.toml ``[project.scripts]``),
each also runnable as ``python -m MODULE``.
"""

from __future__ import annotations

import argparse
from importlib import metadata

from anomaly_attn.config.paths import CONFIG_DIR, CONFIG_DIR_ENV
from anomaly_attn.version import DISTRIBUTION, __version__, provenance


def console_scripts(distribution: str = DISTRIBUTION) -> dict[str, str]:
    """Console script name → module, from the installed distribution's metadata ({} if not installed)."""
    try:
        entry_points = metadata.distribution(distribution).entry_points
    except metadata.PackageNotFoundError:
        return {}
    return {ep.name: ep.module for ep in entry_points if ep.group == "console_scripts"}


def module_of(script: str) -> str:
    """The ``python -m`` form of a console script: ``anomaly-attn-train`` -> ``anomaly_attn.train`` (the
    root shims and ``anomaly_attn.classical``'s ``__main__``), ``anomaly-attn`` -> ``anomaly_attn``."""
    return script.replace("anomaly-attn", "anomaly_attn").replace("-", ".", 1)


def describe() -> str:
    """Version, provenance, config folder and commands, as printed by ``python -m anomaly_attn``."""
    record = provenance()
    commit = record["git_commit"] or "none (not a git checkout)"
    if record["git_dirty"]:
        commit += " with uncommitted changes"
    lines = [
        f"anomaly_attn {__version__}",
        f"  source commit: {commit}",
        f"  configs: {CONFIG_DIR} (add your own: {CONFIG_DIR_ENV}=DIR or hydra.searchpath=[file:///DIR])",
        "  decoded-image cache: python -m anomaly_attn cache --info | --clear",
    ]
    scripts = console_scripts()
    if scripts:
        lines.append("commands (console script, or python -m MODULE):")
        width = max(map(len, scripts))
        lines += [f"  {name:<{width}}  python -m {module_of(name)}" for name in sorted(scripts)]
    else:
        lines.append(
            "no console scripts installed (pip install . adds anomaly-attn-train, ...): "
            "run python -m anomaly_attn.train, .evaluate, .predict, .report, .layers, .classical"
        )
    return "\n".join(lines)


def _gigabytes(count: int) -> str:
    return f"{count / 1e9:.3f} GB"


def cache_command(clear: bool, directory: str | None, max_gb: float) -> int:
    """``cache --info`` (the folder, its entries, their sizes and last use) or ``cache --clear``."""
    import datetime

    from anomaly_attn.data.disk_cache import DecodedImageStore, cache_root

    store = DecodedImageStore(cache_root(directory), max_bytes=int(max_gb * 1e9))
    if clear:
        count, freed = store.clear()
        print(f"removed {count} cached splits ({_gigabytes(freed)}) from {store.directory}")
        return 0
    info = store.info()
    print(f"decoded-image cache: {info['directory']}")
    print(
        f"  {len(info['entries'])} cached splits, {_gigabytes(info['total_bytes'])} "
        f"(limit dataset.cache.max_gb, default {max_gb:g} GB)"
    )
    for row in info["entries"]:
        used = datetime.datetime.fromtimestamp(row["last_used"]).strftime("%Y-%m-%d %H:%M")
        print(f"  {row['name']}  {_gigabytes(row['bytes'])}  last used {used}")
    print("clear it: python -m anomaly_attn cache --clear; turn it off: dataset.cache.enabled=false")
    return 0


def main(argv: list[str] | None = None) -> int:
    from anomaly_attn.data.disk_cache import CACHE_DIR_ENV, CacheSettings

    parser = argparse.ArgumentParser(prog="python -m anomaly_attn", description=__doc__)
    parser.add_argument("--version", action="version", version=f"anomaly_attn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{cache}")
    cache = commands.add_parser(
        "cache",
        help="show (--info) or empty (--clear) the cache of decoded images",
        description=f"The decoded-image cache: dataset.cache.dir, else ${CACHE_DIR_ENV}, else "
        "$XDG_CACHE_HOME/anomaly_attn, else ~/.cache/anomaly_attn (its decoded_images/ subfolder).",
    )
    action = cache.add_mutually_exclusive_group()
    action.add_argument("--info", action="store_true", help="list the cached splits (the default)")
    action.add_argument("--clear", action="store_true", help="delete every cached split")
    cache.add_argument("--dir", default=None, help="the cache folder (default: from the environment)")
    args = parser.parse_args(argv)
    if args.command == "cache":
        return cache_command(args.clear, args.dir, CacheSettings.max_gb)
    print(describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
