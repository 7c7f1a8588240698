"""Training throughput of the real pipeline against a bare PyTorch loop, and the cost of the attention loss.

    python -m benchmarks.bench_train            # prints a Markdown table

The pipeline figure is ``timing.train_images_per_s`` of ``metrics.json`` from ``train_job`` (the Lightning
+ datamodule + callbacks path, timed by ``TrainingThroughput`` from batch start to batch end). The bare
reference trains the same backbone (``create_model``) with Adam and the MSE loss on one random batch that
is already in memory, timed the same way over the same number of steps (first step included), with the
pipeline's speed settings (``trainer.channels_last``, bf16 autocast where ``trainer.cpu_bf16`` turns it on:
``anomaly_attn.training.speed``). The bare loop runs before and after the pipeline and the faster of the
two is kept, so that load from other processes on the machine can only make the ratio look worse, not better.

``run_research_comparison`` trains conv_ae at the research code's MVTec size (256², 3 channels, batch 32)
and compares it with the research code's training speed (10.5-13 images/s on this kind of 2-core CPU,
measured by the author of issue 14; the ratio is taken against the faster end).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.cli.sweeps import CONFIG_DIR
from anomaly_attn.jobs.train import train_job
from anomaly_attn.models import create_model
from anomaly_attn.training.speed import native_cpu_bf16, resolve_precision, speed_options

# The command of the issue: `model=conv_ae loss=mse map.weight=0 dataset.image_size=128
# dataset.batch_size=32` on the embedded textures (1 channel), W&B off so that nothing is uploaded.
THROUGHPUT_OVERRIDES = (
    "model=conv_ae",
    "loss=mse",
    "map.weight=0",
    "dataset.image_size=128",
    "dataset.batch_size=32",
    "logger=none",
    "visualization.max_overlays=0",
    # Training throughput only: no synthetic validation / map selection after the fit.
    "validation=none",
)


def compose_config(overrides: list[str]) -> DictConfig:
    """The training config of ``python -m anomaly_attn.train OVERRIDES``."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def bare_images_per_s(
    image_size: int,
    channels: int,
    batch_size: int,
    steps: int,
    lr: float = 1e-3,
    seed: int = 0,
    channels_last: bool = False,
    threads: int | None = None,
    bf16: bool = False,
) -> float:
    """Images/s of ``steps`` plain Adam steps of conv_ae with the MSE loss on one in-memory batch
    (optionally in channels_last memory format, with bf16 autocast, or with ``threads`` intra-op threads)."""
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads or threads_before)
    try:
        torch.manual_seed(seed)
        model = create_model("conv_ae", image_size=image_size, in_channels=channels)
        images = torch.rand(batch_size, channels, image_size, image_size)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        seconds = 0.0
        for _ in range(steps):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                output = model(images)
                loss = torch.nn.functional.mse_loss(output.reconstruction.float(), images) + output.kl
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seconds += time.perf_counter() - start
        return steps * batch_size / seconds
    finally:
        torch.set_num_threads(threads_before)


BF16_NOTE = {True: "native bf16 on this CPU", False: "emulated: no avx512_bf16/amx_bf16 on this CPU"}
# The research code's training speed of conv_ae at 256², 3 channels, batch 32 on a 2-core CPU (images/s),
# and its Grad-CAM maps (bench_test_step), measured by the author of issue 14.
RESEARCH_TRAIN_IMAGES_PER_S = (10.5, 13.0)


def pipeline_settings(cfg: DictConfig) -> dict[str, bool]:
    """The bare loop's options that match what ``train_job`` does with ``cfg.trainer``."""
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    speed = speed_options(trainer_kwargs)
    precision = resolve_precision(trainer_kwargs, speed)
    return {"channels_last": speed.channels_last, "bf16": str(precision).startswith("bf16")}


def describe(settings: dict[str, bool]) -> str:
    return ("channels_last" if settings["channels_last"] else "contiguous") + (
        " + bf16 autocast" if settings["bf16"] else ", float32"
    )


def pipeline_timing(overrides: list[str]) -> dict:
    """``metrics.json`` of one real training job (in a temporary run directory) with its step count."""
    cfg = compose_config(overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        metrics = train_job(cfg, Path(run_dir))
        written = json.loads((Path(run_dir) / "metrics.json").read_text())
    assert written["timing"]["train_images_per_s"] == metrics["timing"]["train_images_per_s"]
    return written


def run(max_epochs: int = 1, n_train: int = 320, image_size: int = 128, batch_size: int = 32) -> list[dict]:
    """Rows ``{benchmark, ours, unit, reference, reference_value, ratio, target, passed}`` in images/s;
    ``ratio = ours / reference`` (higher is better). The defaults are the issue's command."""
    overrides = dict(override.split("=", 1) for override in THROUGHPUT_OVERRIDES)
    overrides.update({
        "dataset.image_size": image_size,
        "dataset.batch_size": batch_size,
        "trainer.max_epochs": max_epochs,
        "dataset.n_train": n_train,
    })
    base = [f"{key}={value}" for key, value in overrides.items()]
    cfg = compose_config(base)
    image_size, channels, batch_size = (
        int(cfg.dataset.image_size), int(cfg.dataset.channels), int(cfg.dataset.batch_size),
    )
    steps = max_epochs * -(-round(n_train * (1 - float(cfg.dataset.val_fraction))) // batch_size)
    settings = pipeline_settings(cfg)
    bare_before = bare_images_per_s(image_size, channels, batch_size, steps, **settings)
    metrics = pipeline_timing(base)
    bare_after = bare_images_per_s(image_size, channels, batch_size, steps, **settings)
    bare = max(bare_before, bare_after)
    ours = metrics["timing"]["train_images_per_s"]
    pipeline_steps = max_epochs * -(-metrics["n_train"] // batch_size)
    if pipeline_steps != steps:
        raise RuntimeError(f"the pipeline took {pipeline_steps} steps, the bare loop {steps}: fix `steps`")
    shape = f"{batch_size}×{channels}×{image_size}², {steps} steps, {describe(settings)}"
    rows = [
        {
            "benchmark": f"training, attention off (`{' '.join(base[:5])}`)",
            "ours": ours,
            "unit": "images/s",
            "reference": f"bare Adam loop, conv_ae, {shape}",
            "reference_value": bare,
            "ratio": ours / bare,
            "target": ">= 0.9 (check: >= 0.8)",
            "passed": ours / bare >= 0.9,
        },
        {
            "benchmark": "test phase of the same job (`timing.test_images_per_s`: maps, metrics, figures)",
            "ours": metrics["timing"]["test_images_per_s"],
            "unit": "images/s",
            "reference": "",
            "reference_value": float("nan"),
            "ratio": float("nan"),
            "target": "documented",
            "passed": None,
        },
    ]
    schedules = {
        "attention loss every step": ["map.weight=1", "map.every_n_steps=1"],
        "attention loss every 4 steps": ["map.weight=1", "map.every_n_steps=4"],
        "attention loss, last_batch schedule": ["map.weight=1", "map.schedule=last_batch"],
    }
    variant_steps = min(steps, 3)
    bare_short = bare_images_per_s(image_size, channels, batch_size, variant_steps)
    for name, options in (
        ("channels_last", {"channels_last": True}),
        (f"bf16 autocast ({BF16_NOTE[native_cpu_bf16()]})", {"bf16": True}),
        ("channels_last + bf16 autocast", {"channels_last": True, "bf16": True}),
        ("1 intra-op thread", {"threads": 1}),
    ):
        variant = bare_images_per_s(image_size, channels, batch_size, variant_steps, **options)
        rows.append(
            {
                "benchmark": f"bare loop, {name} ({variant_steps} steps)",
                "ours": variant,
                "unit": "images/s",
                "reference": f"bare loop, default ({torch.get_num_threads()} threads, contiguous)",
                "reference_value": bare_short,
                "ratio": variant / bare_short,
                "target": "documented",
                "passed": None,
            }
        )
    # A small test set: these runs only report training throughput.
    small_test_set = ["dataset.n_test_good=2", "dataset.n_test_per_defect=1"]
    for name, schedule_overrides in schedules.items():
        with_attention = pipeline_timing([*base, *small_test_set, *schedule_overrides])
        with_attention = with_attention["timing"]["train_images_per_s"]
        rows.append(
            {
                "benchmark": f"training, {name} (`{' '.join(schedule_overrides)}`)",
                "ours": with_attention,
                "unit": "images/s",
                "reference": "the same pipeline, attention off",
                "reference_value": ours,
                "ratio": with_attention / ours,
                "target": "documented",
                "passed": None,
            }
        )
    return rows


def run_research_comparison(
    image_size: int = 256, channels: int = 3, batch_size: int = 32, steps: int = 4
) -> list[dict]:
    """Training conv_ae at the research code's MVTec size: the pipeline's images/s against the research
    code's (target >= 3x) and against the bare loop with the same settings (target >= 0.9).

    Four steps, the first included on both sides: with two, the first step's set-up weighed half of the
    time and the ratio moved between 0.84 and 0.97 from run to run on the same code."""
    # The smallest set whose training split (10 % held out for validation) is ``steps`` full batches.
    n_train = next(n for n in range(steps * batch_size, 2 * steps * batch_size)
                   if n - max(1, round(0.1 * n)) == steps * batch_size)
    overrides = dict(override.split("=", 1) for override in THROUGHPUT_OVERRIDES)
    overrides.update({
        "dataset.image_size": image_size,
        "dataset.channels": channels,
        "dataset.batch_size": batch_size,
        "dataset.n_train": n_train,
        "dataset.n_test_good": 2,
        "dataset.n_test_per_defect": 1,
        "trainer.max_epochs": 1,
    })
    base = [f"{key}={value}" for key, value in overrides.items()]
    settings = pipeline_settings(compose_config(base))
    bare_before = bare_images_per_s(image_size, channels, batch_size, steps, **settings)
    metrics = pipeline_timing(base)
    bare_after = bare_images_per_s(image_size, channels, batch_size, steps, **settings)
    bare = max(bare_before, bare_after)
    ours = metrics["timing"]["train_images_per_s"]
    research = RESEARCH_TRAIN_IMAGES_PER_S[1]
    shape = f"{batch_size}×{channels}×{image_size}²"
    name = f"training conv_ae at {shape} ({metrics['n_train']} images, {describe(settings)})"
    return [
        {
            "benchmark": name,
            "ours": ours,
            "unit": "images/s",
            "reference": f"research code, {shape} (10.5-13 images/s, issue 14; the faster end)",
            "reference_value": research,
            "ratio": ours / research,
            "target": ">= 3",
            "passed": ours / research >= 3,
        },
        {
            "benchmark": name,
            "ours": ours,
            "unit": "images/s",
            "reference": f"bare Adam loop, conv_ae, {shape}, {steps} steps, {describe(settings)}",
            "reference_value": bare,
            "ratio": ours / bare,
            "target": ">= 0.9 (check: >= 0.8)",
            "passed": ours / bare >= 0.9,
        },
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
