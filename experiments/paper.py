"""Run the paper's sweeps and write their tables and figures.

    python experiments/paper.py mvtec_layers [btad_main ...] [-- trainer=gpu ...]
    python experiments/paper.py --all            # every preset of conf/experiment/ with a `report:` key
    python experiments/paper.py --all --smoke    # their tiny *_smoke variants (embedded textures, CPU)

Each NAME is a preset conf/experiment/NAME.yaml that defines the sweep (hydra.sweeper.params, a fixed
hydra.sweep.dir) and, under ``report:``, the table (rows, cols, metric). The sweep runs first (finished
jobs are skipped, so re-running resumes a killed sweep), then ``python -m anomaly_attn.report``. The
report is written even when some jobs failed (they are listed in it); the exit status is then non-zero.
Overrides after ``--`` go to every sweep (e.g. ``trainer=gpu``, ``dataset.root=/data/mvtec``).

A preset may add ``classical:``, the overrides of a ``python -m anomaly_attn.classical -m`` sweep of the
classical detectors (e.g. ``[dataset=elpv, "category=glob(*)", "detector=knn,ocsvm"]``): it runs after the
training sweeps, with the same seeds, into ``<sweep dir>/../classical``; of the overrides after ``--`` only
``dataset.*`` ones go to it (the detectors have no trainer or model).

Seeds: a preset's ``seeds:`` list (e.g. ``[0, 1, 2]``) adds ``seed=0,1,2`` to each of its sweeps, and the
report aggregates the seeds of a cell into mean ± std (n). ``--seeds 0`` runs other seeds (one seed
costs a third of three); ``seed=...`` after ``--`` wins over both.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from anomaly_attn.config.paths import CONFIG_DIR, with_user_config_dirs

EXPERIMENT_DIR = CONFIG_DIR / "experiment"
REPO = Path(__file__).resolve().parent.parent


def paper_presets(smoke: bool) -> list[str]:
    """Presets that declare a report table (the smoke variants or the real ones)."""
    names = []
    for path in sorted(EXPERIMENT_DIR.glob("*.yaml")):
        if "report" in OmegaConf.load(path) and path.stem.endswith("_smoke") == smoke:
            names.append(path.stem)
    return names


def report_spec(name: str) -> dict[str, str]:
    """The ``report:`` block (rows, cols, metric) of a preset."""
    path = EXPERIMENT_DIR / f"{name}.yaml"
    if not path.exists():
        raise SystemExit(
            f"error: no preset {path}; valid: {', '.join(paper_presets(False) + paper_presets(True))}"
        )
    spec = OmegaConf.load(path).get("report")
    if spec is None:
        raise SystemExit(
            f"error: {path} has no `report:` block (rows, cols, metric), so it is no paper table."
        )
    return {"rows": "category", "cols": "layer", "metric": "pixel_auroc", **OmegaConf.to_container(spec)}


def sweep_dir(name: str, overrides: list[str]) -> Path:
    """Where the preset's sweep writes its jobs (its hydra.sweep.dir, with the overrides applied)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=with_user_config_dirs([f"experiment={name}", *overrides]),
            return_hydra_config=True,
        )
    return Path(str(cfg.hydra.sweep.dir))


def preset_sweeps(name: str) -> list[list[str]]:
    """The sweeps of a preset: one (its own hydra.sweeper.params), or one per entry of its ``sweeps:``
    block, for studies over datasets whose categories differ (each entry: the overrides of one sweep)."""
    sweeps = OmegaConf.load(EXPERIMENT_DIR / f"{name}.yaml").get("sweeps")
    if not sweeps:
        return [[]]
    return [[str(item) for item in entry] for entry in OmegaConf.to_container(sweeps).values()]


def preset_seeds(name: str, seeds: str | None = None) -> list[str]:
    """The ``seed=...`` override every sweep of a preset gets: ``seeds`` (``--seeds 0,1,2``) if given, else
    the preset's ``seeds:`` list; none when neither is set (the config's seed)."""
    if seeds is None:
        listed = OmegaConf.load(EXPERIMENT_DIR / f"{name}.yaml").get("seeds")
        seeds = ",".join(str(int(seed)) for seed in listed) if listed else ""
    values = [value.strip() for value in seeds.split(",") if value.strip()]
    bad = [value for value in values if not value.lstrip("-").isdigit()]
    if bad:
        raise SystemExit(f"error: seeds must be integers (e.g. --seeds 0,1,2); got {', '.join(bad)}")
    return [f"seed={','.join(values)}"] if values else []


def classical_sweep(name: str, directory: Path, seed_sweep: list[str], overrides: list[str]) -> list[str]:
    """The command of the preset's ``classical:`` sweep (empty without one): its overrides, the seeds,
    the ``dataset.*`` ones of ``overrides``, into ``directory.parent / "classical"``."""
    listed = OmegaConf.load(EXPERIMENT_DIR / f"{name}.yaml").get("classical")
    if not listed:
        return []
    forwarded = [item for item in overrides if item.lstrip("+~").startswith("dataset.")]
    return [sys.executable, "-m", "anomaly_attn.classical", "-m", *(str(item) for item in listed),
            *seed_sweep, *forwarded, f"hydra.sweep.dir={directory.parent / 'classical'}"]


def run_paper_table(name: str, overrides: list[str], seeds: str | None = None) -> int:
    """Sweep(s), the ``classical:`` sweep if any, then report (and the preset's ``report.script``, if
    any). Returns 0 when every job and the report succeeded. ``seeds``: comma-separated seeds instead of
    the preset's ``seeds:``; a ``seed=`` among ``overrides`` wins over both."""
    spec = report_spec(name)
    given = [item for item in overrides if item.split("=", 1)[0].lstrip("+~") == "seed"]
    seed_sweep = given or preset_seeds(name, seeds)
    others = [item for item in overrides if item not in given]
    sweep_status = 0
    for sweep in preset_sweeps(name):
        train = [sys.executable, "-m", "anomaly_attn.train", "-m", f"experiment={name}", *sweep, *seed_sweep,
                 *others]
        print("+", " ".join(train), flush=True)
        sweep_status = subprocess.call(train) or sweep_status
    directory = sweep_dir(name, others)
    classical = classical_sweep(name, directory, seed_sweep, others)
    if classical:
        print("+", " ".join(classical), flush=True)
        sweep_status = subprocess.call(classical) or sweep_status
    report = [sys.executable, "-m", "anomaly_attn.report", str(directory)]
    report += ["--rows", spec["rows"], "--cols", spec["cols"], "--metric", spec["metric"]]
    print("+", " ".join(report), flush=True)
    report_status = subprocess.call(report)
    if spec.get("script"):
        script = [sys.executable, str(REPO / spec["script"]), str(directory)]
        print("+", " ".join(script), flush=True)
        report_status = subprocess.call(script) or report_status
    return sweep_status or report_status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="presets of conf/experiment/")
    parser.add_argument("--all", action="store_true", help="every preset with a report: block")
    parser.add_argument("--smoke", action="store_true", help="with --all: the *_smoke variants")
    parser.add_argument(
        "--seeds", default=None,
        help="comma-separated seeds for every sweep (default: the preset's `seeds:`; e.g. --seeds 0)",
    )
    args = parser.parse_args(argv)
    names = args.names + (paper_presets(args.smoke) if args.all else [])
    if not names:
        parser.error("name at least one preset, or pass --all")
    failed = [name for name in names if run_paper_table(name, overrides, args.seeds) != 0]
    if failed:
        print(f"Tables with failed jobs or reports: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
