"""Interruption and preemption: SIGINT (Ctrl-C) and SIGTERM (what clusters send before they
preempt a job) ask the loop to stop after the current step; the engine then writes a
checkpoint on every rank, says how to resume, and the recipe exits with
:data:`EXIT_INTERRUPTED`. A second Ctrl-C aborts at once.

``accelerate launch`` passes a signal it receives on to its workers, so a worker can see the
same Ctrl-C twice within milliseconds (once from the terminal, once from the launcher): a
repeat within :data:`REPEAT_GRACE_S` counts as the first.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

#: Exit status of a run stopped by a signal after writing its checkpoint (EX_TEMPFAIL: "try
#: again", what a requeueing job script checks for).
EXIT_INTERRUPTED = 75
#: A second SIGINT this soon after the first is the launcher forwarding it, not a person.
REPEAT_GRACE_S = 1.0


class RunInterrupted(Exception):
    """A run stopped by a signal after writing a resumable checkpoint.

    Attributes:
        step: the optimizer step the checkpoint holds.
        checkpoint: its folder.
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
    """

    def __init__(self, step: int, checkpoint: Path, signal_name: str) -> None:
        self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name
        super().__init__(
            f"{signal_name} at step {step}: checkpoint {checkpoint} written; resume with the "
            "same command plus run.resume=latest"
        )


class StopSignals:
    """While active, SIGINT and SIGTERM set :attr:`received` instead of killing the process.

    A no-op outside the main thread (Python delivers signals to the main thread only).
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received, self._first_at = name, time.monotonic()
            print(
                f"\n{name}: stopping after this step and writing a checkpoint "
                "(Ctrl-C again to abort without one)",
                file=sys.stderr,
                flush=True,
            )
        elif signum == signal.SIGINT and time.monotonic() - self._first_at > REPEAT_GRACE_S:
            raise KeyboardInterrupt
