"""The OmegaConf resolvers of conf/ (config/resolvers.py)."""

from __future__ import annotations

from pathlib import Path

from anomaly_attn.config.paths import CONFIG_DIR
from anomaly_attn.config.resolvers import MAX_DIRNAME_BYTES, job_dirname, monitor_mode


def test_long_job_folder_names_are_cut_with_a_digest_and_stay_apart() -> None:
    short = "category=brick,seed=0"
    assert job_dirname(short) == short
    # A sweep with many overrides: 'File name too long' (255 bytes) used to take the whole sweep down.
    base = "category=0,dataset.corruption=white," + ",".join(f"faithfulness.key{i}=ü{i}" for i in range(30))
    first, second = job_dirname(base + ",seed=0"), job_dirname(base + ",seed=1")
    assert len(first.encode()) <= MAX_DIRNAME_BYTES < 255 and len(second.encode()) <= MAX_DIRNAME_BYTES
    assert first != second and first == job_dirname(base + ",seed=0")  # a re-run finds its folder
    assert first.startswith("category=0,dataset.corruption=white,")
    first.encode().decode()  # never a cut multi-byte character


def test_the_sweep_configs_name_job_folders_through_it() -> None:
    for name in ("hydra/default.yaml", "evaluate.yaml"):
        text = (Path(CONFIG_DIR) / name).read_text()
        assert "${anomaly_attn.job_dirname:${hydra.job.override_dirname}}" in text


def test_monitor_mode_follows_the_key() -> None:
    assert monitor_mode("val_objective") == "max" and monitor_mode("val_loss") == "min"
