"""Find run directories (any folder holding config.yaml and, when complete, metrics.json) and read them
through ``anomaly_attn.run.store`` (which translates older runs' key names)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anomaly_attn.run.store import ERROR_FILE, METRICS_FILE, read_metrics, read_run_config


@dataclass
class Run:
    """One job's run directory: its metrics when complete, else why it is not."""

    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = "complete"  # complete | failed | incomplete
    error: str = ""
    stale: str = ""  # why its numbers may not belong with the rest of its sweep ("" when they do)
    _config: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def value(self, key: str) -> Any:
        """A metric or field by dotted path, e.g. 'controls.residual_l2.pixel_auroc'; a key that
        metrics.json lacks is looked up in the run's config.yaml (e.g. 'dataset.corruption')."""
        found = _lookup(self.metrics, key)
        if found is None and self.status == "complete":
            found = _lookup(self.config(), key)
        return found

    def config(self) -> dict[str, Any]:
        """The run's resolved config.yaml ({} when absent or unreadable)."""
        if self._config is None:
            self._config = read_run_config(self.path)
        return self._config


def _lookup(node: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def find_runs(root: str | Path) -> list[Run]:
    """Every run directory below ``root``, sorted by path. Failed and incomplete runs are returned
    too (with their status), so reports list them instead of silently dropping them; complete runs whose
    config or code differs from the rest of their sweep are marked (``Run.stale``)."""
    root = Path(root)
    # A job that failed before writing config.yaml (a bad value, a missing dataset) left only error.txt.
    marks = {"config.yaml", METRICS_FILE, ERROR_FILE}
    candidates = {folder for folder, files in _walk(root) if marks & files and folder.name != ".hydra"}
    runs = []
    for path in sorted(candidates):
        if path.name == "report" or "wandb" in path.parts:
            continue
        metrics_file = path / METRICS_FILE
        error_file = path / ERROR_FILE
        if metrics_file.exists():
            try:
                runs.append(Run(path, read_metrics(metrics_file)))
            except ValueError as error:
                runs.append(Run(path, status="incomplete", error=f"unreadable metrics.json: {error}"))
        elif error_file.exists():
            first = (error_file.read_text().strip().splitlines() or [""])[0]
            runs.append(Run(path, status="failed", error=first))
        else:
            runs.append(Run(path, status="incomplete", error="no metrics.json (still running or killed)"))
    mark_stale(runs)
    return runs


def _walk(root: Path) -> list[tuple[Path, set[str]]]:
    """Every folder below ``root`` (itself included) with its file names, following symbolic links to
    folders (a ROOT of links to runs kept elsewhere), each real folder once (no loop through a link to a
    parent)."""
    found, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        found.append((Path(folder), set(files)))
    return found


def select_runs(runs: list[Run], where: list[str]) -> list[Run]:
    """The runs whose ``KEY`` equals ``VALUE`` for every ``KEY=VALUE`` of ``where`` (values compared as
    text: ``dataset.corruption=white``, ``seed=1``). Failed or unfinished runs that never recorded the key
    stay in, so a filtered report still lists them. Raises ``ValueError`` for a malformed condition or
    one that no complete run meets, naming the values the runs have."""
    for condition in where:
        key, sep, value = condition.partition("=")
        if not sep or not key:
            raise ValueError(f"--where {condition!r}: write KEY=VALUE, e.g. dataset.corruption=white.")
        kept = [run for run in runs
                if str(run.value(key)) == value or (run.status != "complete" and run.value(key) is None)]
        if not any(run.status == "complete" for run in kept):
            seen = sorted({str(run.value(key)) for run in runs if run.status == "complete"})
            raise ValueError(f"--where {condition}: no complete run has {key}={value}; "
                             f"its values here: {', '.join(seen) or 'none'}.")
        runs = kept
    return runs


def swept_keys(sweep_dir: Path) -> set[str]:
    """The keys a Hydra sweep varies (from ``SWEEP_DIR/multirun.yaml``'s task overrides and a preset's
    ``hydra.sweeper.params``): a swept config group (``dataset=mvtec,btad``) varies its whole node. A
    preset with a ``sweeps:`` block runs several sweeps into one folder and multirun.yaml keeps only the
    last one's overrides, so every key its entries set counts as varied too (the attention study's
    ``dataset.corruption=white,gray`` and the textures' ``trainer.max_epochs``). Empty when the folder
    is not a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = sweep_dir / "multirun.yaml"
    try:
        hydra = yaml.safe_load(path.read_text())["hydra"]
        task = [str(o) for o in hydra["overrides"]["task"]]
        params = (hydra.get("sweeper") or {}).get("params") or {}
        parser = OverridesParser.create()
        parsed = parser.parse_overrides(task + [f"{k}={v}" for k, v in params.items()])
    except Exception:  # not a sweep, or a multirun.yaml this version cannot read: compare everything
        return set()
    keys = {o.key_or_group.replace("/", ".") for o in parsed if o.is_sweep_override()}
    experiment = next((str(o.value()) for o in parsed if o.key_or_group == "experiment"), None)
    for entry in _preset_sweeps(experiment):
        try:
            keys |= {o.key_or_group.replace("/", ".") for o in parser.parse_overrides(entry)}
        except Exception:  # an entry this version cannot parse: its keys are compared as usual
            continue
    return keys


def _preset_sweeps(experiment: str | None) -> list[list[str]]:
    """The overrides of each entry of preset ``experiment``'s ``sweeps:`` block ([] without one)."""
    if not experiment:
        return []
    from anomaly_attn.config.paths import CONFIG_DIR

    preset = Path(CONFIG_DIR) / "experiment" / f"{experiment}.yaml"
    try:
        sweeps = yaml.safe_load(preset.read_text()).get("sweeps") or {}
    except (OSError, AttributeError, yaml.YAMLError):
        return []
    return [[str(item) for item in entry] for entry in sweeps.values() if isinstance(entry, list)]


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _differing_keys(config: dict[str, Any], reference: dict[str, Any], ignored: set[str]) -> list[str]:
    from anomaly_attn.common.fingerprint import RUN_ONLY_KEYS

    skip = tuple(ignored) + RUN_ONLY_KEYS
    mine, theirs = _leaves(config), _leaves(reference)
    return sorted(
        key
        for key in set(mine) | set(theirs)
        if mine.get(key) != theirs.get(key) and not _skipped(key, skip)
    )


def _skipped(key: str, skip: tuple[str, ...]) -> bool:
    return any(key == s or key.startswith(s + ".") for s in skip)


def _own_leaves(run: Run) -> dict[str, Any]:
    """The run's config leaves except those that name its own folder (a checkpoint ``dirpath``, an output
    directory): where a run wrote its files is no setting of it."""
    places = {str(run.path), str(run.path.resolve())}
    return {
        key: value
        for key, value in _leaves(run.config()).items()
        if not (isinstance(value, str) and any(value == p or p + "/" in value for p in places))
    }


def config_differences(run: Run, other: Run, ignored: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """``(key, run's value, other's value)`` for every dotted config leaf in which two runs differ, in key
    order, leaving out ``RUN_ONLY_KEYS``, ``ignored`` (each with everything under it: ``seed`` is the
    top-level seed only, never ``dataset.seed``) and values naming the run's own folder. A key one run
    lacks reads None."""
    from anomaly_attn.common.fingerprint import RUN_ONLY_KEYS

    skip = tuple(ignored) + RUN_ONLY_KEYS
    mine, theirs = _own_leaves(run), _own_leaves(other)
    return [
        (key, mine.get(key), theirs.get(key))
        for key in sorted(set(mine) | set(theirs))
        if mine.get(key) != theirs.get(key) and not _skipped(key, skip)
    ]


def mark_stale(runs: list[Run]) -> None:
    """Mark complete runs of a sweep whose results come from another config or code than the majority
    of that sweep's runs: a config key that the sweep does not vary differs (a yaml edited between
    runs), or metrics.json's ``provenance.code_digest`` differs or is missing. A swept config group
    (``dataset=fmnist,textures``) also changes what its options set elsewhere (the model, the validation
    set), so runs are compared with the runs of the same option only."""
    groups: dict[Path, list[Run]] = {}
    for run in runs:
        if run.status == "complete" and (run.path.parent / "multirun.yaml").exists():
            groups.setdefault(run.path.parent, []).append(run)
    for sweep_dir, in_sweep in groups.items():
        varied = swept_keys(sweep_dir)
        options: dict[tuple[str, ...], list[Run]] = {}
        for run in in_sweep:
            choice = tuple(str(_lookup(run.config(), f"{key}.name")) for key in sorted(varied)
                           if isinstance(_lookup(run.config(), key), dict))
            options.setdefault(choice, []).append(run)
        for members in options.values():
            if len(members) >= 2:
                _mark_against_majority(members, varied)


def _mark_against_majority(members: list[Run], varied: set[str]) -> None:
    """``mark_stale`` for the runs of one sweep (and one option of each swept group)."""
    from anomaly_attn.common.fingerprint import RUN_ONLY_KEYS, config_digest

    codes = [str(_lookup(r.metrics, "provenance.code_digest")) for r in members]
    majority_code = max(sorted(set(codes)), key=codes.count)
    # The reference config: one of the most common digests of what the sweep keeps fixed.
    digests = [config_digest(r.config(), RUN_ONLY_KEYS + tuple(sorted(varied))) for r in members]
    majority = max(sorted(set(digests)), key=digests.count)
    reference = members[digests.index(majority)].config()
    for run, code, digest in zip(members, codes, digests, strict=True):
        reasons = []
        differing = _differing_keys(run.config(), reference, varied) if digest != majority else []
        if differing:
            shown = ", ".join(differing[:5]) + (", ..." if len(differing) > 5 else "")
            reasons.append(f"its config differs from the rest of the sweep in {shown}")
        if code != majority_code:
            reasons.append("it ran other code than the rest of the sweep"
                           if code != "None" else "its metrics.json predates code digests")
        run.stale = "; ".join(reasons)


def known_keys(runs: list[Run]) -> tuple[set[str], set[str]]:
    """(numeric metric keys, field keys) that complete runs have: dotted leaves of metrics.json (numbers
    only for the first) and, for fields, of config.yaml too."""
    metrics: set[str] = set()
    fields: set[str] = set()
    for run in runs:
        if run.status != "complete":
            continue
        for key, value in _leaves(run.metrics).items():
            fields.add(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics.add(key)
        fields.update(_leaves(run.config()))
    return metrics, fields


def _unknown_key(option: str, value: str, known: set[str], what: str, listed: str, hint: str) -> ValueError:
    """The error for a report option naming a key no run has: close matches, the valid names, a hint."""
    import difflib

    close = difflib.get_close_matches(value, sorted(known), n=5)
    return ValueError(
        f"{option} {value!r} is not {what}." + (f" Did you mean: {', '.join(close)}?" if close else "")
        + f" Valid {listed}; {hint}."
    )


def check_report_keys(runs: list[Run], rows: str, cols: str, metric: str) -> None:
    """Raise ``ValueError`` naming the valid choices when ``--metric``/``--rows``/``--cols`` names a key
    no complete run has (a typo would otherwise give a table of dashes). Nothing to check without
    complete runs."""
    metrics, fields = known_keys(runs)
    if not metrics:
        return
    if metric not in metrics:
        top = ", ".join(sorted(k for k in metrics if "." not in k))
        raise _unknown_key(
            "--metric", metric, metrics, "a numeric key of any run's metrics.json",
            f"top-level metrics: {top}",
            "nested ones are dotted (e.g. controls.residual_l2.pixel_auroc, validation.pixel_auroc)",
        )
    for option, value in (("--rows", rows), ("--cols", cols)):
        for part in (p.strip() for p in value.split(",")):
            if part not in fields:
                top = ", ".join(sorted(k for k in fields if "." not in k and k not in metrics))
                raise _unknown_key(
                    option, part, fields, "a key of any run's metrics.json or config.yaml",
                    f"fields include: {top}", "config keys are dotted (e.g. dataset.image_size, "
                    "map.weight); join several with commas",
                )
