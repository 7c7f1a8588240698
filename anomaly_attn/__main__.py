"""``python -m anomaly_attn [--version]``: the version, where the configs are, and the commands.

The commands are read from the installed package's console scripts (pyproject.toml ``[project.scripts]``),
each also runnable as ``python -m MODULE``.
"""

from __future__ import annotations

import argparse
from importlib import metadata

from anomaly_attn.configs import CONFIG_DIR, CONFIG_DIR_ENV
from anomaly_attn.version import DISTRIBUTION, __version__, provenance


def console_scripts(distribution: str = DISTRIBUTION) -> dict[str, str]:
    """Console script name → module, from the installed distribution's metadata ({} if not installed)."""
    try:
        entry_points = metadata.distribution(distribution).entry_points
    except metadata.PackageNotFoundError:
        return {}
    return {ep.name: ep.module for ep in entry_points if ep.group == "console_scripts"}


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
    ]
    scripts = console_scripts()
    if scripts:
        lines.append("commands (console script, or python -m MODULE):")
        width = max(map(len, scripts))
        lines += [
            f"  {name:<{width}}  python -m {module.removesuffix('.__main__')}"
            for name, module in sorted(scripts.items())
        ]
    else:
        lines.append(
            "no console scripts installed (pip install . adds anomaly-attn-train, ...): "
            "run python -m anomaly_attn.train, .evaluate, .predict, .report, .layers, .baselines"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anomaly_attn", description=__doc__)
    parser.add_argument("--version", action="version", version=f"anomaly_attn {__version__}")
    parser.parse_args(argv)
    print(describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
