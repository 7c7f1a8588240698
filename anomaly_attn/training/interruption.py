"""Time limits and preemption stop a job; they do not fail it.

On SLURM the scheduler warns a job before its time limit (``--signal=USR2@signal_delay_s``, submitit's
preemption signal) and sends SIGTERM when it preempts, cancels or requeues it. Submitit's own SIGUSR2
handler requeues the job and calls ``sys.exit`` at once, wherever training happens to be: the epoch in
progress is lost, and the requeue's SIGTERM reaches the W&B service process before the job closes its
run, so the job's ``wandb.finish`` then failed with ``ConnectionResetError`` and the attempt was recorded
as a failed job while SLURM was requeueing it. (W&B's exit hook had the same race with the service
process: ``shut_down_wandb_service`` ends it before the requeue.)

``interruptible`` wraps one job instead. Its handler (SIGTERM, and submitit's preemption signal where
submitit installed a handler for it) only records the signal and stops the job with ``JobInterrupted``:
at once outside training, or, while a single-process ``fit`` runs (``CheckpointOnSignal``), at the end
of the current training batch after saving ``checkpoints/last.ckpt``. The job's own ``finally`` closes
W&B while its service is still alive; then the previous handler runs: submitit's checkpoint-and-requeue
(one requeue mechanism: Lightning's SLURM auto-requeue is turned off under submitit, see
``pipeline.make_trainer``) or, for SIGTERM, submitit's log line. ``JobInterrupted`` is a ``SystemExit``,
so ``isolate_failure`` does not record it as a failure: the attempt leaves no error.txt and, under
submitit, no result, and the requeued attempt resumes from last.ckpt (``requeued_attempt``).

Kept free of torch/Lightning imports: the entry point imports it before any job starts.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


class JobInterrupted(SystemExit):
    """The job stopped on a signal (time limit, preemption, cancellation): not a failure.

    Exit status 128 + the signal number, as if the signal had ended the process."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)

    def __str__(self) -> str:
        return f"job interrupted by {signal.Signals(self.signum).name}"


def submitit_preempt_signal() -> signal.Signals:
    """The signal submitit asks SLURM for before the time limit (``SUBMITIT_PREEMPT_SIGNAL``, USR2)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, "SIG" + name.upper(), signal.SIGUSR2)


def requeued_attempt() -> int:
    """How often SLURM has requeued this job (``SLURM_RESTART_COUNT``; 0 for a first attempt or no SLURM)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def several_slurm_tasks() -> bool:
    try:
        return int(os.environ.get("SLURM_NTASKS", "1")) > 1
    except ValueError:
        return False


class SignalGuard:
    """Records the first stop signal of a job and decides when the job stops (see the module doc)."""

    def __init__(self) -> None:
        self.received: int | None = None
        # Set by CheckpointOnSignal while a single-process fit runs: stop at the next batch end instead.
        self.defer = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Handle SIGTERM, and submitit's preemption signal when submitit handles it (else it keeps
        its meaning). Only the main thread may set handlers; elsewhere nothing changes. Jobs of several
        SLURM tasks (DDP) keep submitit's handling: it requeues from rank 0 and lets the other ranks
        run on, which stopping every rank on its own could pre-empt."""
        if threading.current_thread() is not threading.main_thread() or several_slurm_tasks():
            return
        signals = [signal.SIGTERM]
        preempt = submitit_preempt_signal()
        if callable(signal.getsignal(preempt)):
            signals.append(preempt)
        for signum in signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            log.info("Received %s while stopping; already stopping.", signal.Signals(signum).name)
            return
        self.received = signum
        where = "at the end of the current training batch (saving last.ckpt)" if self.defer else "now"
        log.warning("Received %s: stopping the job %s.", signal.Signals(signum).name, where)
        if not self.defer:
            raise JobInterrupted(signum)

    def hand_over(self, previous: Any) -> None:
        """After the job has stopped and closed its loggers: run the handler that was there before
        (submitit's checkpoint-and-requeue, which exits), else stop the process with the signal's status."""
        assert self.received is not None
        shut_down_wandb_service()
        if callable(previous):
            previous(self.received, None)
        raise JobInterrupted(self.received)


def shut_down_wandb_service() -> None:
    """Stop this process's W&B service (wandb-core) now, while it is alive. A requeue's SIGTERM reaches
    the service too; W&B's own exit hook would then write to a dead socket and print a
    ``ConnectionResetError`` traceback into the attempt's log. The job's run is already finished;
    this only ends the service, and never raises."""
    wandb = sys.modules.get("wandb")
    if wandb is None:
        return
    try:
        wandb.teardown()
    except Exception as error:  # noqa: BLE001 - the job is stopping; a log service must not change that
        log.warning("Could not stop the W&B service cleanly (%s: %s).", type(error).__name__, error)


_active: SignalGuard | None = None


def active_guard() -> SignalGuard | None:
    """The guard of the job running in this process (None outside ``interruptible``)."""
    return _active


@contextmanager
def interruptible() -> Iterator[SignalGuard]:
    """Run one job so that a stop signal ends it cleanly (module doc). An exception raised after a
    stop signal (e.g. a data loader worker that the same signal killed) counts as the interruption."""
    global _active
    guard = SignalGuard()
    guard.install()
    previous = dict(guard._previous)
    _active = guard
    interrupted = False
    try:
        yield guard
    except BaseException as error:
        if guard.received is None:
            raise
        interrupted = True
        if not isinstance(error, SystemExit):
            name = signal.Signals(guard.received).name
            log.warning("Stopped after %s; the error that followed it: %s", name, repr(error)[:300])
    finally:
        _active = None
        guard.restore()
    if interrupted:
        guard.hand_over(previous.get(guard.received))
    elif guard.received is not None:
        log.info("The job finished before %s stopped it.", signal.Signals(guard.received).name)
