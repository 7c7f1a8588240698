"""ELPV (dataset=elpv) on a generated folder in its layout (labels.csv + images/, through dataset.root):
the seeded split of the normals, the uncertain cells, the missing-data errors, and a run without pixel
masks that writes no pixel metric (never NaN) in metrics.json, the summary and the report."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest

from anomaly_attn.data import elpv as elpv_module
from anomaly_attn.data.dataset import AnomalyImageDataset, ImageCache
from anomaly_attn.data.elpv import ELPV
from anomaly_attn.data.errors import LayoutError, MissingDataError
from anomaly_attn.data.layout import Record, read_layout
from anomaly_attn.data.splits import CategorySplits
from tests.conftest import REPO, compose_cfg
from tests.fixtures import make_elpv_tree, pixel_keys, snapshot_tree

NAN = re.compile(r"\bnan\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def elpv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_elpv_tree(tmp_path_factory.mktemp("elpv"))


def _names(records: list[Record]) -> list[str]:
    return sorted(record.path.name for record in records)


def test_split_counts_labels_and_probabilities(elpv_root: Path) -> None:
    dataset = ELPV(root=elpv_root)
    assert dataset.categories() == ["mono", "poly"] and dataset.image_size == 128 and dataset.channels == 1
    for category, normals, train, defective in (("mono", 8, 6, 3), ("poly", 12, 9, 4)):
        records = read_layout(dataset.prepare(category))
        assert len(records.train) == train == round(0.75 * normals)
        good = [r for r in records.test if r.label == 0]
        bad = [r for r in records.test if r.label == 1]
        assert len(good) == normals - train and len(bad) == defective
        assert {r.defect_type for r in good} == {"good"} and {r.defect_type for r in bad} == {"defective"}
        assert {r.defect_probability for r in records.train + good} == {0.0}
        assert {r.defect_probability for r in bad} == {1.0}
        assert all(r.mask_path is None for r in records.train + records.test)
        assert not set(_names(records.train)) & set(_names(records.test))


def test_the_split_is_seeded_by_split_seed_not_by_the_run_seed(elpv_root: Path) -> None:
    first = read_layout(ELPV(root=elpv_root).prepare("poly"))
    again = read_layout(ELPV(root=elpv_root).prepare("poly"))
    other = read_layout(ELPV(root=elpv_root, split_seed=1).prepare("poly"))
    assert _names(first.train) == _names(again.train)
    assert _names(first.train) != _names(other.train) and len(other.train) == len(first.train)
    # The run seed only moves the validation normals, held out of the 9 training cells as for every dataset.
    tested = []
    for seed in (0, 1):
        splits = CategorySplits(ELPV(root=elpv_root, num_workers=0), "poly", seed=seed)
        splits.setup()
        assert len(splits.train_set) == 8 and len(splits.val_set) == 1
        assert _names(splits.train_set.records + splits.val_set.records) == _names(first.train)
        tested.append(_names(splits.test_set.records))
    assert tested[0] == tested[1]


def test_uncertain_cells_are_tested_as_anomalous_on_request(elpv_root: Path) -> None:
    default = read_layout(ELPV(root=elpv_root).prepare("mono"))
    with_uncertain = read_layout(ELPV(root=elpv_root, uncertain="test").prepare("mono"))
    assert _names(with_uncertain.train) == _names(default.train)
    added = [r for r in with_uncertain.test if r.path.name not in _names(default.test)]
    assert sorted((r.defect_type, r.label) for r in added) == [
        ("uncertain_p033", 1), ("uncertain_p033", 1), ("uncertain_p067", 1)
    ]
    assert {round(r.defect_probability, 4) for r in added} == {0.3333, 0.6667}
    with pytest.raises(ValueError, match="dataset.uncertain must be one of exclude, test"):
        ELPV(root=elpv_root, uncertain="drop")


def test_a_clone_layout_is_found_below_the_root(tmp_path: Path) -> None:
    make_elpv_tree(tmp_path / "elpv-dataset" / "src" / "elpv_dataset" / "data")
    layout = ELPV(root=tmp_path / "elpv-dataset").prepare("mono")
    assert layout.root == tmp_path / "elpv-dataset" / "src" / "elpv_dataset" / "data"


def test_missing_data_names_the_install_and_the_root(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(MissingDataError) as error:
        ELPV(root=tmp_path / "nothing").prepare("mono")
    message = str(error.value)
    assert f"dataset.root={tmp_path / 'nothing'}" in message and "labels.csv" in message
    monkeypatch.setattr(elpv_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDataError) as error:
        ELPV().prepare("poly")
    message = str(error.value)
    assert "pip install 'anomaly_attn[elpv]'" in message and "pip install elpv-dataset" in message
    assert "dataset.root=" in message
    with pytest.raises(ValueError, match="valid categories: mono, poly"):
        ELPV().prepare("cz")


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("images/cell0001.png  0.5  mono", "must be 0, 1/3, 2/3 or 1"),
        ("images/cell0001.png  1.0  thin", "must be mono or poly"),
        ("images/cell9999.png  1.0  mono", "does not exist"),
        ("images/cell0001.png  1.0", "expected 3 fields"),
    ],
)
def test_a_bad_line_of_labels_csv_is_named(tmp_path: Path, line: str, complaint: str) -> None:
    root = make_elpv_tree(tmp_path / "elpv")
    labels = root / "labels.csv"
    labels.write_text(labels.read_text() + line + "\n")
    with pytest.raises(LayoutError, match=re.escape(complaint)) as error:
        read_layout(ELPV(root=root).prepare("mono"))
    assert str(labels) in str(error.value) and "line" in str(error.value)


def test_samples_carry_the_probability_only_where_the_dataset_gives_one(tmp_path: Path) -> None:
    root = make_elpv_tree(tmp_path / "elpv")
    image = next((root / "images").iterdir())
    cache = ImageCache(8, 1)
    records = [Record(image, None, 0, "good"), Record(image, None, 1, "x", 127, 2 / 3)]
    plain, elpv = AnomalyImageDataset(records, cache)
    assert "defect_probability" not in plain and elpv["defect_probability"] == pytest.approx(2 / 3)


def test_category_glob_expands_to_mono_and_poly(elpv_root: Path) -> None:
    from anomaly_attn.cli.sweeps import expand_sweep_overrides

    argv = expand_sweep_overrides(["-m", "dataset=elpv", f"dataset.root={elpv_root}", "category=glob(*)"])
    assert "category=mono,poly" in argv
    assert "category=poly" in expand_sweep_overrides(["-m", "dataset=elpv", "category=glob(p*)"])


def _tiny(root: Path, *extra: str) -> list[str]:
    return ["dataset=elpv", f"dataset.root={root}", "dataset.image_size=64", "dataset.batch_size=4",
            "dataset.num_workers=0", "trainer.max_epochs=1", "logger=csv", "visualization.max_overlays=0",
            "validation=none", "faithfulness.images=2", "faithfulness.cascade=[1.0]", *extra]


def _finite_json(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_run_without_masks_has_image_metrics_only_and_no_nan(tmp_path: Path, elpv_root: Path) -> None:
    from anomaly_attn.cli.report import default_metric
    from anomaly_attn.cli.summary import run_summary
    from anomaly_attn.jobs.train import train_job
    from anomaly_attn.reporting.runs import find_runs
    from anomaly_attn.reporting.sweep_report import build_report

    before = snapshot_tree(elpv_root)
    run_dir = tmp_path / "sweep" / "category=mono"
    metrics = train_job(compose_cfg(_tiny(elpv_root, "category=mono", "dataset.uncertain=test")), run_dir)
    stored = _finite_json(run_dir / "metrics.json")
    assert pixel_keys(stored) == []
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and "image_auroc" in stored["controls"]["residual_l2"]
    assert stored["n_test"] == 2 + 3 + 3 and set(stored["per_defect"]) == {
        "defective", "uncertain_p033", "uncertain_p067"
    }
    with open(run_dir / "per_image_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({round(float(row["defect_probability"]), 2) for row in rows}) == [0.0, 0.33, 0.67, 1.0]
    assert all(row["label"] == ("0" if float(row["defect_probability"]) == 0 else "1") for row in rows)

    summary = run_summary(stored, run_dir)
    assert "pixel metrics  none: the test set has no pixel masks" in summary and not NAN.search(summary)
    runs = find_runs(tmp_path / "sweep")
    assert default_metric(runs) == "image_auroc"
    out = build_report(tmp_path / "sweep", "category", "model", "image_auroc", figures=False, runs=runs)
    for name in ("summary.md", "selection.md", "table.md"):
        text = (out / name).read_text()
        assert not NAN.search(text), (name, text)
    assert "no pixel metrics (test images without masks" in (out / "table.md").read_text()
    assert snapshot_tree(elpv_root) == before, "the dataset folder is never written to"


def test_classical_detectors_write_intervals_and_the_probability(tmp_path: Path, elpv_root: Path) -> None:
    from anomaly_attn.jobs.classical import classical_job

    overrides = ["dataset=elpv", f"dataset.root={elpv_root}", "dataset.image_size=32",
                 "dataset.num_workers=0", "category=poly", "detector=knn"]
    metrics = classical_job(compose_cfg(overrides, "classical"), tmp_path / "knn")
    interval = metrics["intervals"]["maps"]["score"]["image_auroc"]
    assert interval["low"] <= metrics["image_auroc"] <= interval["high"]
    with open(tmp_path / "knn" / "per_image_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "defect_type", "label", "defect_probability", "score"] and len(rows) == 7


def test_the_study_preset_and_its_classical_sweep() -> None:
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import paper
    finally:
        sys.path.remove(str(REPO / "experiments"))
    cfg = compose_cfg(["experiment=elpv_study"])
    assert (cfg.dataset.name, cfg.dataset.image_size, cfg.model.name, cfg.trainer.max_epochs) == (
        "elpv", 128, "conv_ae", 20
    )
    assert paper.preset_seeds("elpv_study") == ["seed=0,1,2"]
    command = paper.classical_sweep("elpv_study", Path("out/elpv_study/multirun"), ["seed=0"],
                                    ["trainer.max_epochs=1", "dataset.root=/data/elpv"])
    assert command[1:4] == ["-m", "anomaly_attn.classical", "-m"]
    assert "detector=knn,ocsvm,iforest,lof,kmeans" in command and "seed=0" in command
    assert "dataset.root=/data/elpv" in command and "trainer.max_epochs=1" not in command
    assert command[-1] == f"hydra.sweep.dir={Path('out/elpv_study/classical')}"


def test_the_real_data_table_gives_every_auroc_with_its_interval(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import elpv_table
    finally:
        sys.path.remove(str(REPO / "experiments"))
    from anomaly_attn.reporting.runs import Run

    def band(low: float, high: float) -> dict:
        return {"image_auroc": {"low": low, "high": high, "std": 0.01}}

    trained = Run(tmp_path / "t", {
        "dataset": "elpv", "category": "mono", "seed": 0, "model": "conv_ae", "epochs": 20,
        "image_score": "max of residual_l2", "image_auroc": 0.7,
        "controls": {"residual_l2": {"image_auroc": 0.6}, "image_highpass": {"image_auroc": 0.4}},
        "intervals": {"maps": {"selected": band(0.65, 0.75), "residual_l2": band(0.55, 0.65)}},
    })
    knn = Run(tmp_path / "k", {"dataset": "elpv", "category": "mono", "seed": 0, "model": "classical:knn",
                               "image_auroc": 0.87, "intervals": {"maps": {"score": band(0.84, 0.9)}}})
    lof = Run(tmp_path / "l", {"dataset": "elpv", "category": "poly", "seed": 0, "model": "classical:lof",
                               "image_auroc": 0.8})
    text = elpv_table.real_data_markdown([trained], [lof, knn])
    header = "| category | seed | selected image score | AUROC | residual_l2 | image_highpass | knn | lof |"
    assert header in text
    assert ("| mono | 0 | max of residual_l2 | 0.700 [0.650, 0.750] | 0.600 [0.550, 0.650] | 0.400 | "
            "0.870 [0.840, 0.900] | – |") in text
    assert "| poly | 0 | – | – | – | – | – | 0.800 |" in text
    assert "image metrics only" in text and not NAN.search(text)
    assert elpv_table.main([str(tmp_path / "empty")]) == 2
