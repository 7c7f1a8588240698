"""Speed options of the training step: memory format, bf16 autocast, torch.compile, loader workers.

They live in the ``trainer`` config group next to Lightning's own arguments but are not Lightning
arguments; :func:`speed_options` takes them out of the trainer config and :func:`resolve_precision`
turns ``cpu_bf16`` into Lightning's ``precision``:

- ``channels_last`` (bool): train conv models in the channels-last (NHWC) memory format, which oneDNN's
  CPU convolutions and cuDNN's tensor-core kernels run faster; the map engine computes selection,
  calibration and test maps in it too (``MapEngine.channels_last``), equal to the default format's up to
  float rounding (~1e-5 relative). The model is back in the default format outside these.
- ``cpu_bf16`` (``false``/``true``/``auto``): bf16 autocast for the training and validation steps on a
  CPU. Off by default (``conf/trainer/cpu.yaml``): a default that followed the CPU would train
  different models on different machines from the same command (``benchmarks/bench_quality.py``
  compares them). ``true`` turns it on (fast only with native bf16 instructions, ``avx512_bf16`` or
  ``amx_bf16``: :func:`native_cpu_bf16`; emulated and slower elsewhere); ``auto`` turns it on only where
  it is native. Anomaly maps, the attention loss and metrics are computed in float32 whatever the
  precision.
- ``compile`` (bool): ``torch.compile`` the backbone's training forward (the eager module stays the one
  that attention hooks, checkpoints and maps use).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anomaly_attn.common.flags import parse_flag

log = logging.getLogger(__name__)

# Trainer-group keys that are ours, not pl.Trainer arguments.
SPEED_KEYS = ("channels_last", "cpu_bf16", "compile")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class SpeedOptions:
    """The speed options of one job (see the module docstring)."""

    channels_last: bool = False
    cpu_bf16: str = "false"
    compile: bool = False


def speed_options(trainer_kwargs: dict[str, Any]) -> SpeedOptions:
    """Remove the speed keys from ``trainer_kwargs`` (a ``cfg.trainer`` container) and return them."""
    cpu_bf16 = trainer_kwargs.pop("cpu_bf16", "false")
    cpu_bf16 = str(cpu_bf16).strip().lower()  # YAML reads true/false as booleans, auto as text
    if cpu_bf16 not in ("auto", "true", "false"):
        raise ValueError(
            f"trainer.cpu_bf16={cpu_bf16!r}; valid: auto (on where the CPU has native bf16), true, false"
        )
    return SpeedOptions(
        channels_last=parse_flag(trainer_kwargs.pop("channels_last", False), "trainer.channels_last"),
        cpu_bf16=cpu_bf16,
        compile=parse_flag(trainer_kwargs.pop("compile", False), "trainer.compile"),
    )


@functools.cache
def native_cpu_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU runs bf16 natively: oneDNN says so, or ``/proc/cpuinfo`` lists ``avx512_bf16`` or
    ``amx_bf16``. Without them bf16 matmuls and convolutions are emulated (slower than float32)."""
    try:
        if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return True
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without the op
        pass
    try:
        flags = set()
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
    except OSError:
        return False
    return any(flag in flags for flag in _CPU_BF16_FLAGS)


def resolve_precision(trainer_kwargs: dict[str, Any], options: SpeedOptions) -> str | int | None:
    """Lightning's ``precision`` for this job: ``bf16-mixed`` on a CPU only when ``cpu_bf16`` asks for it
    (true; auto: native bf16 only), else float32; a GPU's ``bf16-mixed`` falls back to ``32-true`` on a
    GPU without bf16."""
    precision = trainer_kwargs.get("precision", "32-true")
    accelerator = str(trainer_kwargs.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and str(precision) in ("32-true", "32", "None"):
        wanted = options.cpu_bf16 == "true" or (options.cpu_bf16 == "auto" and native_cpu_bf16())
        if wanted:
            if not native_cpu_bf16():
                log.warning(
                    "trainer.cpu_bf16=true on a CPU without native bf16 (no avx512_bf16/amx_bf16 in "
                    "/proc/cpuinfo): bf16 is emulated there and usually slower than float32; "
                    "trainer.cpu_bf16=auto turns it on only where it is native."
                )
            return "bf16-mixed"
    if (
        accelerator in ("gpu", "cuda")
        and str(precision).startswith("bf16")
        and torch.cuda.is_available()
        and not torch.cuda.is_bf16_supported()
    ):
        log.warning(
            "trainer.precision=%s but this GPU has no bf16 (before Ampere): training in float32 "
            "(trainer.precision=16-mixed for float16 autocast).", precision,
        )
        return "32-true"
    return precision
