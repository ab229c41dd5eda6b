"""Progress reporting and cancellation shared by every long-running MedAI job."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

log = logging.getLogger("medai")

ProgressCallback = Callable[[float, str], None]


class Cancelled(RuntimeError):
    """Raised inside a job when its :class:`CancelToken` was cancelled."""


class CancelToken:
    """Thread-safe flag a GUI or CLI sets to stop a job at its next check point."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __call__(self) -> bool:
        """``token()`` is ``token.cancelled``: downloads take any ``() -> bool`` as their cancel check."""
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


class Progress:
    """Maps the sub-steps of a job onto one 0..1 fraction, checks cancellation, records stage times.

    ``progress.stage("inference", weight=0.7)`` opens a stage that covers 70% of the bar;
    ``progress.update(fraction)`` reports progress within the current stage.
    """

    def __init__(self, callback: ProgressCallback | None = None, cancel: CancelToken | None = None) -> None:
        self.callback = callback
        self.cancel = cancel or CancelToken()
        self.timings: dict[str, float] = {}
        self._base = 0.0
        self._span = 0.0
        self._name = ""

    def update(self, fraction: float) -> None:
        self.cancel.check()
        if self.callback is not None:
            self.callback(min(1.0, self._base + self._span * max(0.0, min(1.0, fraction))), self._name)

    @contextmanager
    def stage(self, name: str, weight: float) -> Iterator["Progress"]:
        self.cancel.check()
        self._name, self._span = name, weight
        self.update(0.0)
        start = time.perf_counter()
        try:
            yield self
        finally:
            elapsed = time.perf_counter() - start
            self.timings[name] = self.timings.get(name, 0.0) + elapsed
            log.info("%s: %.2f s", name, elapsed)
        self._base += weight
        self.update(0.0)

    def done(self) -> None:
        self._base, self._span, self._name = 1.0, 0.0, "done"
        if self.callback is not None:
            self.callback(1.0, "done")
