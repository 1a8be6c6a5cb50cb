"""SIGTERM and SIGINT during training: stop at a step boundary with a checkpoint.

SLURM and Kubernetes send SIGTERM some seconds before they reclaim a machine; Ctrl-C sends
SIGINT. The first signal asks the run to stop: in one process the step in flight is abandoned
at once if its update has not begun to change the weights (it is redone on resume, exactly),
otherwise it finishes; under several processes every process finishes the step and they stop
together. The trainer then writes a checkpoint of the last completed step and raises
:class:`explorl.errors.Interrupted`. A second signal exits at once; checkpoints are written
atomically, so the previous one stays whole.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StepAbandoned(BaseException):
    """Raised into the step in flight; a BaseException, so that no ``except Exception`` on the
    way (a faulty reward's, a judge's) swallows it."""


class Interrupts:
    """The signals a run has received, and whether the step in flight may still be abandoned."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._abandonable = False
        self._can_abandon = True

    @contextlib.contextmanager
    def installed(self, can_abandon: bool):
        """Handle SIGTERM and SIGINT for the duration (from the main thread only); with
        ``can_abandon`` (one process) a step in flight may be abandoned."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._can_abandon = can_abandon
        previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextlib.contextmanager
    def abandonable(self):
        """The window in which a signal abandons the step in flight; :meth:`close` ends it
        early (before the first change to the weights)."""
        self._abandonable = self._can_abandon
        try:
            yield
        finally:
            self._abandonable = False

    def close(self) -> None:
        """From here on the step in flight runs to its end."""
        self._abandonable = False

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            os._exit(128 + signum)  # a second signal: at once, the last checkpoint stays whole
        self.received = signum
        if self._abandonable:
            self._abandonable = False
            raise StepAbandoned(signum)

    @staticmethod
    def name(signum: int) -> str:
        return signal.Signals(signum).name
