"""Speed options of the training step (training/speed.py): config, precision, memory format, maps."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from anomaly_attn.training import speed
from anomaly_attn.training.module import AnomalyModule
from anomaly_attn.training.trainer import make_trainer
from tests.conftest import compose_cfg

MODEL = {"name": "conv_ae", "image_size": 64, "in_channels": 1}
ATTENTION = {"variant": "mean_abs_cam", "input": "residual", "smoothing_sigma": 0.0, "fusion": "none"}


def make_module(**attention: object) -> AnomalyModule:
    torch.manual_seed(0)
    return AnomalyModule(MODEL, {"mse": 1.0}, {**ATTENTION, **attention}, layer="encoder.16")


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    with_flag = tmp_path / "with"
    with_flag.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    without = tmp_path / "without"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert speed.native_cpu_bf16(str(with_flag)) is True
    # Without the flags only oneDNN's own check can say yes.
    assert speed.native_cpu_bf16(str(without)) is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_speed_keys_are_taken_out_of_the_trainer_arguments_and_checked() -> None:
    kwargs = {"accelerator": "cpu", "channels_last": True, "cpu_bf16": "auto", "compile": False}
    options = speed.speed_options(kwargs)
    assert options == speed.SpeedOptions(channels_last=True, cpu_bf16="auto", compile=False)
    assert kwargs == {"accelerator": "cpu"}
    assert speed.speed_options({"cpu_bf16": True}).cpu_bf16 == "true"  # YAML's boolean
    with pytest.raises(ValueError, match=r"trainer.cpu_bf16='fast'; valid: auto"):
        speed.speed_options({"cpu_bf16": "fast"})
    with pytest.raises(ValueError, match=r"trainer.channels_last='maybe'"):
        speed.speed_options({"channels_last": "maybe"})


@pytest.mark.parametrize(
    ("cpu_bf16", "native", "expected"),
    [("auto", False, "32-true"), ("auto", True, "bf16-mixed"), ("true", False, "bf16-mixed"),
     ("false", True, "32-true")],
)
def test_cpu_bf16_decides_the_cpu_precision(monkeypatch, cpu_bf16: str, native: bool, expected: str) -> None:
    monkeypatch.setattr(speed, "native_cpu_bf16", lambda: native)
    kwargs = {"accelerator": "cpu", "precision": "32-true"}
    assert speed.resolve_precision(kwargs, speed.SpeedOptions(cpu_bf16=cpu_bf16)) == expected
    # An explicit precision other than float32 is the user's choice, kept as it is.
    kwargs = {"accelerator": "cpu", "precision": "bf16-true"}
    assert speed.resolve_precision(kwargs, speed.SpeedOptions(cpu_bf16=cpu_bf16)) == "bf16-true"


def test_gpu_bf16_falls_back_to_float32_on_a_gpu_without_bf16(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    kwargs = {"accelerator": "gpu", "precision": "bf16-mixed"}
    assert speed.resolve_precision(kwargs, speed.SpeedOptions()) == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert speed.resolve_precision(kwargs, speed.SpeedOptions()) == "bf16-mixed"


def test_gpu_config_composes_with_bf16_cudnn_benchmark_and_compile_off() -> None:
    trainer = compose_cfg(["trainer=gpu"]).trainer
    assert (trainer.precision, trainer.benchmark, trainer.compile) == ("bf16-mixed", True, False)
    assert trainer.inference_mode is False  # attention needs gradients at test time
    cpu = compose_cfg([]).trainer
    assert (cpu.precision, cpu.channels_last, cpu.cpu_bf16, cpu.compile) == ("32-true", True, False, False)


def test_the_default_config_trains_in_float32_on_a_cpu_with_native_bf16(monkeypatch, tmp_path: Path) -> None:
    # The same command must train the same model on every CPU: bf16 only when asked for.
    monkeypatch.setattr(speed, "native_cpu_bf16", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_cfg([])
    trainer_kwargs = dict(cfg.trainer)
    assert speed.resolve_precision(trainer_kwargs, speed.speed_options(trainer_kwargs)) == "32-true"
    trainer = make_trainer(cfg, tmp_path, [], [])
    assert trainer.precision == "32-true"
    assert not isinstance(trainer.precision_plugin, pl.plugins.precision.MixedPrecision)


def test_make_trainer_turns_cpu_bf16_into_lightning_precision(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(speed, "native_cpu_bf16", lambda: True)
    for asked in ("true", "auto"):
        trainer = make_trainer(compose_cfg([f"trainer.cpu_bf16={asked}"]), tmp_path, [], [])
        assert isinstance(trainer.precision_plugin, pl.plugins.precision.MixedPrecision)
        assert trainer.precision_plugin.precision == "bf16-mixed"
    trainer = make_trainer(compose_cfg(["trainer.cpu_bf16=false"]), tmp_path, [], [])
    assert trainer.precision == "32-true"


def test_unset_num_workers_is_chosen_from_the_cpu_count(monkeypatch) -> None:
    from anomaly_attn.data import build

    monkeypatch.setattr(build, "default_num_workers", lambda: 3)
    dataset = build.build_dataset(compose_cfg(["dataset.num_workers=null"]))
    assert dataset.num_workers == 3
    monkeypatch.undo()
    cores = len(__import__("os").sched_getaffinity(0))
    assert build.default_num_workers() == max(0, min(8, cores - 1))


def test_channels_last_holds_during_the_fit_only_and_gives_the_same_step() -> None:
    images = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    plain, fast = make_module(), make_module()
    fast.configure_speed(channels_last=True)
    fast.on_fit_start()
    conv = fast.model.encoder[3]  # 32 -> 32 channels (with 1 channel both formats coincide)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    loss_plain = plain.training_step({"image": images}, 0)
    loss_fast = fast.training_step({"image": images}, 0)
    torch.testing.assert_close(loss_fast, loss_plain, rtol=1e-4, atol=1e-6)
    loss_plain.backward()
    loss_fast.backward()
    # The same gradient up to float32 summation order (other convolution kernels; InstanceNorm amplifies
    # it to a relative difference of about 2e-3 here): cosine similarity, not bitwise equality.
    cosine = torch.nn.functional.cosine_similarity(
        conv.weight.grad.flatten(), plain.model.encoder[3].weight.grad.flatten(), dim=0
    )
    assert float(cosine) > 0.999
    fast.on_fit_end()
    assert conv.weight.is_contiguous()


def test_maps_stay_float32_and_unchanged_inside_bf16_autocast() -> None:
    module = make_module().eval()
    images = torch.rand(2, 1, 64, 64)
    reference, _ = module.engine.compute_maps(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps, reconstruction = module.engine.compute_maps(images)
    assert reconstruction.dtype == torch.float32
    for name, value in maps.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, reference[name], rtol=0, atol=0)


def test_attention_loss_is_computed_without_autocast_in_a_bf16_training_step() -> None:
    module = make_module(weight=1.0, loss="mean", every_n_steps=1, schedule="every_n_steps")
    images = torch.rand(2, 1, 64, 64)
    seen = []
    original = module.attention_training_loss

    def recording(network_input: torch.Tensor) -> torch.Tensor:
        loss = original(network_input)
        seen.append((torch.is_autocast_enabled("cpu"), network_input.dtype, loss.dtype))
        return loss

    module.attention_training_loss = recording
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module.training_step({"image": images}, 0)
    assert seen == [(False, torch.float32, torch.float32)]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.slow  # dynamo tracing: 55 s at load 10 on 2 cores
def test_compile_flag_compiles_the_training_forward_only(monkeypatch) -> None:
    compiled = []
    real_compile = torch.compile

    def eager_compile(model: torch.nn.Module, **kwargs: object) -> torch.nn.Module:
        compiled.append(model)
        # Dynamo traces the real model; the eager backend skips inductor's C++ build (minutes on 2 cores).
        return real_compile(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    images = torch.rand(2, 1, 64, 64)
    plain, fast = make_module(), make_module()
    fast.configure_speed(compile_training=True)
    fast.on_fit_start()
    assert compiled == [fast.model]
    batch = {"image": images}
    torch.testing.assert_close(fast.training_step(batch, 0), plain.training_step(batch, 0))
    assert list(fast.state_dict()) == list(plain.state_dict())  # no `_orig_mod.` keys in checkpoints
    fast.on_fit_end()
    assert "_compiled_model" not in fast.__dict__
