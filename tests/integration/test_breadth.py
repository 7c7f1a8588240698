"""The method's breadth: every backbone × every attention map, training-time attention (losses,
second order, the research code's last-batch schedule) and layer sweeps."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from anomaly_attn.cli.sweeps import expand_sweep_overrides
from anomaly_attn.data.build import build_dataset
from anomaly_attn.jobs.finish import choose_test_and_record
from anomaly_attn.jobs.train import train_job
from anomaly_attn.training.callbacks.attention_schedule import (
    LastBatchAttentionStep,
    attention_schedule_callbacks,
)
from anomaly_attn.training.datamodule import AnomalyDataModule
from anomaly_attn.training.module import AnomalyModule
from anomaly_attn.training.trainer import build_module, make_trainer
from tests.conftest import compose_cfg, run_cli, tiny_overrides

MODELS = ("conv_ae", "mnist_ae", "unet", "vae", "timm_ae")
ATTENTIONS = (
    "seed",
    "gradcam",
    "gradcam_abs",
    "gradcam_pp",
    "layercam",
    "expvae",
    "residual_l2",
    "residual_ssim",
)



def tiny_model_overrides(model: str, attention: str, **extra: str) -> list[str]:
    return tiny_overrides(
        category="brick",
        model=model,
        map=attention,
        # 64 px for every backbone, as in `dataset=textures dataset.image_size=64 model=NAME`; the
        # configured map as it is (24 images leave too few held-out ones for synthetic validation).
        **{"dataset.image_size": "64", "dataset.n_train": "24", "validation": "none"},
        **extra,
    )


def assert_complete_metrics(metrics: dict, model: str, attention: str) -> None:
    assert metrics["model"] == model and metrics["variant"] == attention
    for key in ("pixel_auroc", "image_auroc", "pixel_aupro"):
        assert 0.0 <= metrics[key] <= 1.0, (model, attention, key, metrics[key])
    if attention.startswith("residual"):
        # A control map as the configured map: identical to the same model's control.
        assert metrics["pixel_auroc"] == metrics["controls"][attention]["pixel_auroc"]


@pytest.mark.parametrize(("model", "attention"), [("unet", "gradcam_pp"), ("vae", "expvae")])
def test_representative_model_and_attention_pairs_train_and_score(
    model: str, attention: str, tmp_path: Path
) -> None:
    metrics = train_job(compose_cfg(tiny_model_overrides(model, attention)), tmp_path)
    assert_complete_metrics(metrics, model, attention)
    assert json.loads((tmp_path / "metrics.json").read_text())["layer"] == metrics["layer"]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_every_attention_scores_every_model(model: str, tmp_path: Path) -> None:
    """Train each backbone once, then score the test set with every attention (one run dir each)."""
    trained_dir = tmp_path / "seed"
    train_job(compose_cfg(tiny_model_overrides(model, "mean_abs_cam")), trained_dir)
    state = torch.load(trained_dir / "checkpoints" / "model.ckpt", weights_only=True)["state_dict"]
    for attention in ATTENTIONS[1:]:
        cfg = compose_cfg(tiny_model_overrides(model, attention))
        module = build_module(cfg)
        module.load_state_dict(state)
        datamodule = AnomalyDataModule(build_dataset(cfg), category="brick", seed=0)
        datamodule.setup("fit")
        run_dir = tmp_path / attention
        trainer = make_trainer(cfg, run_dir, [], [])
        metrics = choose_test_and_record(cfg, module, datamodule, trainer, run_dir, [])
        assert_complete_metrics(metrics, model, attention)
        assert (run_dir / "metrics.json").exists()


# ----------------------------------------------------------------- training-time attention
def conv_ae_module(**attention: object) -> AnomalyModule:
    torch.manual_seed(0)
    return AnomalyModule(
        model={"name": "conv_ae", "image_size": 64, "in_channels": 1},
        loss_terms={"mse": 1.0},
        attention={"variant": "mean_abs_cam", "loss": "mean", "every_n_steps": 1, "schedule": "every_n_steps",
                   **attention},
        layer="encoder.2",
    )


def gradients(module: AnomalyModule, images: torch.Tensor) -> dict[str, torch.Tensor]:
    module.zero_grad(set_to_none=True)
    module.training_step({"image": images}, 0).backward()
    return {
        name: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for name, p in module.model.named_parameters()
    }


@pytest.mark.parametrize("loss", ["mean", "mean_std", "expansion"])
def test_attention_loss_changes_the_encoder_gradients_only_up_to_the_layer(loss: str) -> None:
    images = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    without = gradients(conv_ae_module(loss=loss, weight=0.0), images)
    with_attention = gradients(conv_ae_module(loss=loss, weight=1.0), images)
    # First order (the seed): G is a constant, so the loss reaches the weights only through A, i.e.
    # the modules up to encoder.2 (conv 0 and its InstanceNorm); nothing after it moves. Conv 0's
    # bias is cancelled by the InstanceNorm after it (zero gradient either way).
    changed = {
        name
        for name in without
        if not torch.allclose(without[name], with_attention[name], rtol=1e-5, atol=1e-8)
    }
    assert changed == {"encoder.0.weight", "encoder.1.weight", "encoder.1.bias"}


def test_second_order_attention_loss_also_reaches_the_layers_after_it() -> None:
    images = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    first = gradients(conv_ae_module(weight=1.0, second_order=False), images)
    second = gradients(conv_ae_module(weight=1.0, second_order=True), images)
    reconstruction_only = gradients(conv_ae_module(weight=0.0), images)
    # Through G = ∂s/∂A the loss now depends on every encoder weight after encoder.2 as well.
    assert not torch.allclose(second["encoder.3.weight"], reconstruction_only["encoder.3.weight"])
    torch.testing.assert_close(first["encoder.3.weight"], reconstruction_only["encoder.3.weight"])
    # The decoder is not on the path to the latent code: its gradient is the reconstruction's alone.
    torch.testing.assert_close(second["decoder.0.weight"], reconstruction_only["decoder.0.weight"])


def test_every_n_steps_applies_the_attention_loss_on_that_schedule() -> None:
    module = conv_ae_module(weight=1.0, every_n_steps=3)
    applied = []
    for step in range(7):
        module._trainer = type("FakeTrainer", (), {"global_step": step})()  # only global_step is read
        applied.append(module._attention_weight_now() > 0)
    module._trainer = None
    assert applied == [True, False, False, True, False, False, True]


class ImagesOnly(Dataset):
    def __init__(self, count: int) -> None:
        self.images = torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(count))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index]}


class RecordingStep(LastBatchAttentionStep):
    """Records (epoch, batch index, batch size) of every attention step it takes."""

    def __init__(self, lr: float) -> None:
        super().__init__(lr)
        self.taken: list[tuple[int, int, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        before = self.steps_run
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.steps_run > before:
            self.taken.append((trainer.current_epoch, batch_idx, len(batch["image"])))


@pytest.mark.parametrize(("n_images", "last_batch_size"), [(32, 16), (40, 8)])
def test_last_batch_schedule_runs_exactly_once_per_epoch(n_images: int, last_batch_size: int) -> None:
    """Also when the dataset size is a multiple of the batch size (32 = 2·16), where the research
    code's 'last partial batch' step never ran."""
    torch.manual_seed(0)
    module = AnomalyModule(
        model={"name": "mnist_ae", "image_size": 28, "in_channels": 1},
        loss_terms={"mse": 1.0},
        attention={"variant": "mean_abs_cam", "loss": "mean", "weight": 1.0, "schedule": "last_batch"},
    )
    assert module._attention_weight_now() == 0.0, "training_step leaves last_batch to the callback"
    (schedule,) = attention_schedule_callbacks(module.attention_cfg, {"lr": 1e-3})
    recording = RecordingStep(lr=schedule.lr)
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=[recording],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
    )
    batches_per_epoch = -(-n_images // 16)
    trainer.fit(module, DataLoader(ImagesOnly(n_images), batch_size=16))
    assert recording.taken == [(epoch, batches_per_epoch - 1, last_batch_size) for epoch in range(3)]
    # The second Adam took 3 steps on the same weights; the main optimizer its 3·batches steps.
    second_adam_steps = {int(s["step"]) for s in recording.optimizer.state.values()}
    assert second_adam_steps == {3}
    assert trainer.global_step == 3 * batches_per_epoch
    main_params = {id(p) for p in module.model.parameters()}
    assert {id(p) for group in recording.optimizer.param_groups for p in group["params"]} == main_params
    # Saved and restored with checkpoints (resume continues the second Adam's moments).
    restored = LastBatchAttentionStep(lr=1e-3)
    restored.load_state_dict(copy.deepcopy(recording.state_dict()))
    restored.setup(trainer, module, "fit")
    assert restored.steps_run == 3 and len(restored.optimizer.state) == len(recording.optimizer.state)


def test_schedule_config_is_validated() -> None:
    with pytest.raises(ValueError, match="every_n_steps, last_batch"):
        attention_schedule_callbacks({"schedule": "last_partial_batch"}, {"lr": 1e-3})
    assert attention_schedule_callbacks({"schedule": "every_n_steps", "weight": 1.0}, {"lr": 1e-3}) == []
    off = {"schedule": "last_batch", "variant": "mean_abs_cam", "loss": "mean", "weight": 0.0}
    assert attention_schedule_callbacks(off, {"lr": 1e-3}) == []


def test_seed_repro_preset_trains_with_one_attention_step_per_epoch(tmp_path: Path) -> None:
    # 36 generated images, 4 held out: 32 training images = exactly 2 batches of 16 per epoch.
    cfg = compose_cfg(
        tiny_overrides(
            category="brick",
            experiment="research_schedule",
            **{"dataset.n_train": "36", "trainer.max_epochs": "2", "layer": "encoder.2"},
        )
    )
    assert cfg.map.schedule == "last_batch" and cfg.map.weight == 1.0
    metrics = train_job(cfg, tmp_path)
    assert metrics["n_train"] == 32 and metrics["experiment"] == "research_schedule"
    # The callback's state rides in the checkpoint: 2 epochs -> 2 steps, 2 Adam moments per weight.
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    schedule_state = state["LastBatchAttentionStep"]
    assert schedule_state["steps_run"] == 2
    assert {int(s["step"]) for s in schedule_state["optimizer"]["state"].values()} == {2}


# ----------------------------------------------------------------- layer sweeps
def test_layer_glob_expands_to_every_conv_ae_layer() -> None:
    args = expand_sweep_overrides(["-m", "model=conv_ae", "layer=glob(encoder.*)", *tiny_overrides()])
    (layer_arg,) = [arg for arg in args if arg.startswith("layer=")]
    assert layer_arg.removeprefix("layer=").split(",") == [f"encoder.{i}" for i in range(28)]
    args = expand_sweep_overrides(["-m", "model=unet", "layer=glob(encoder.*,exclude=encoder.4)"])
    assert "layer=encoder.0,encoder.1,encoder.2,encoder.3" in args


@pytest.mark.slow
def test_a_three_layer_glob_launches_three_jobs(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            "model=conv_ae",
            "layer=glob([encoder.0,encoder.14,encoder.27])",
            *tiny_overrides(category="brick"),
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = {
        m["layer"]: m for m in (json.loads(p.read_text()) for p in sweep_dir.rglob("metrics.json"))
    }
    assert sorted(metrics) == ["encoder.0", "encoder.14", "encoder.27"]
    # The flat layer runs too (a constant map per image, see tests/unit/test_layers_cli.py).
    assert all(0.0 <= m["pixel_auroc"] <= 1.0 for m in metrics.values())
