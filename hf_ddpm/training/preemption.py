"""SIGTERM and SIGINT during training: finish the step, write a checkpoint, say how to resume, exit.

SLURM (``#SBATCH --signal=TERM@120``), spot instances and Ctrl-C send one of these before the machine goes
away. :class:`StopSignals` turns the first into a request that the training loop honours after the
current optimizer step: it writes a checkpoint exactly as the periodic ones (``run_checkpoint.py``), lets
a queued Hub upload finish, and the command exits with ``EXIT_STOPPED``. A second signal stops the process
at once, by the signal's default action; checkpoints are renamed into place whole
(``checkpointing.py``), so the last complete one stays valid whenever that happens.

With several processes a signal may reach one rank only, or the ranks at different steps: the ranks agree
(the first signal any rank received) at the loop's next read of the losses, which already waits for the
device, so every rank stops after the same step and the main process writes one checkpoint. DataLoader
workers ignore both signals (:func:`ignore_stop_signals`): a Ctrl-C reaches the whole process group, and a
worker that died of it would end the run with a DataLoader error instead of a checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Exit status of a run stopped by a signal after writing its checkpoint: sysexits.h's EX_TEMPFAIL,
# "try again later", which here means resume.
EXIT_STOPPED = 75


def ignore_stop_signals(_worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: the worker leaves SIGTERM and SIGINT to the training process."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


class StopSignals:
    """While entered, the first SIGTERM or SIGINT is recorded (:attr:`received`) and the second kills the
    process at once. Handlers can only be installed from the main thread; elsewhere (a training run
    started from a worker thread) signals keep their previous handling."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        try:
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        except ValueError:  # not the main thread
            self._restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, _frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(number).name
            # Not the logging module: its lock may be held by the code this handler interrupted.
            print(
                f"hf-ddpm train: {self.received} received: stopping after this step with a checkpoint "
                "(a second signal stops at once)",
                file=sys.stderr,
                flush=True,
            )
            return
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)

    def agreed(self, accelerator: Accelerator, at_sync_point: bool) -> str | None:
        """The signal every rank stops for, or ``None`` to go on. One process: the local request, after
        any step. Several: at ``at_sync_point`` steps only, all ranks exchange theirs (a collective that
        every rank must reach at the same step) and stop together for the lowest-numbered signal."""
        if accelerator.num_processes == 1:
            return self.received
        if not at_sync_point:
            return None
        import torch

        code = 0 if self.received is None else int(signal.Signals[self.received])
        codes = accelerator.gather(torch.tensor([code], device=accelerator.device)).tolist()
        received = sorted(c for c in codes if c)
        if not received:
            return None
        self.received = self.received or signal.Signals(received[0]).name
        return signal.Signals(received[0]).name
