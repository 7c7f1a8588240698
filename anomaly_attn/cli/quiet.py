"""Quiet by default: one line per log record, and no third-party tips or deprecation noise.

Lightning's ``lightning`` package logger has a console handler of its own, so every Lightning record was
printed twice (``INFO: ...`` and Hydra's ``[time][name][INFO] - ...``); here it reaches Hydra's handlers
alone. Messages that tell the user nothing about their run (cloud-logging tips, a SLURM ``srun`` hint on
machines with SLURM installed, an internal deprecation inside Lightning, the logging-interval warning of
short epochs, the devices Lightning did not find) are dropped from the console; the run's log file
(``<run dir>/<command>.log``) keeps every record. ``--verbose`` on the command line (or
``ANOMALY_ATTN_VERBOSE=1``) shows everything.

Kept free of torch/Lightning imports: it only touches the ``logging`` and ``warnings`` state.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "ANOMALY_ATTN_VERBOSE"

# Third-party messages that say nothing about the user's run, each a regular expression.
NOISE = (
    r"💡 Tip:",
    r"litlogger|litmodels",
    r"The `srun` command is available on your system but is not used",
    r"isinstance\(treespec, LeafSpec\)` is deprecated",
    r"is smaller than the logging interval Trainer\(log_every_n_steps",
    r"^(GPU|TPU|HPU|IPU) available: ",
)
_NOISE = re.compile("|".join(f"(?:{pattern})" for pattern in NOISE))
_LIGHTNING_LOGGERS = (
    "lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"
)


def take_verbose_flag(argv: list[str]) -> list[str]:
    """``argv`` without ``--verbose`` (Hydra would refuse it); the flag sets ``ANOMALY_ATTN_VERBOSE=1``."""
    if VERBOSE_FLAG in argv:
        os.environ[VERBOSE_ENV] = "1"
    return [argument for argument in argv if argument != VERBOSE_FLAG]


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


class DropNoise(logging.Filter):
    """Drops records whose message matches ``NOISE``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _NOISE.search(record.getMessage())


def quiet_third_party_output() -> None:
    """Route Lightning's records to Hydra's handlers only and drop the ``NOISE`` from the console.

    Call it in each job after Lightning is imported (its import adds the extra handler)."""
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    if verbose():
        return
    for pattern in NOISE:
        warnings.filterwarnings("ignore", message=f".*{pattern.lstrip('^')}")
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler) and not any(
            isinstance(existing, DropNoise) for existing in handler.filters
        ):
            handler.addFilter(DropNoise())
