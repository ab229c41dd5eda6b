"""Background segmentation jobs: compute on a worker thread, apply on the main thread.

Qt-free. The worker thread runs :meth:`SegmentLogic.compute` (reads voxels, touches no node); the
scene change (:meth:`SegmentLogic.apply`) and every user callback are handed to a
:class:`MainThreadQueue` that the main thread drains:

* headless and in tests: ``job.wait()`` (or ``queue.process_pending()``) drains it on the calling thread;
* in Slicer: ``MedAILib.QueuePump`` drains it from a ``qt.QTimer`` that lives on the main thread
  (a timer created on the worker thread would never fire: that thread has no event loop).

A failed or cancelled job leaves the scene as it was: no node is created before the result is
complete, and :meth:`SegmentLogic.apply` rolls back a half-written output node.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

from ..engine.progress import CancelToken, Cancelled
from .segment_logic import SegmentLogic

log = logging.getLogger(__name__)

RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"


class MainThreadQueue:
    """Callables queued from any thread, run in order by :meth:`process_pending` on the main thread."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], Any]] = queue.SimpleQueue()
        self.owner = threading.get_ident()

    def __call__(self, fn: Callable[[], Any]) -> None:
        self._queue.put(fn)

    def process_pending(self, timeout: float = 0.0) -> int:
        """Run what is queued (waiting up to ``timeout`` s for the first item); returns how many ran."""
        ran = 0
        try:
            fn = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return 0
        while True:
            try:
                fn()
            except Exception:  # a callback's bug must not stop the queue
                log.exception("MedAI: a main-thread callback failed")
            ran += 1
            try:
                fn = self._queue.get_nowait()
            except queue.Empty:
                return ran


class SegmentJob:
    """One segmentation run. ``state`` is running, succeeded, failed or cancelled; ``node`` the output."""

    def __init__(self, logic: SegmentLogic, input_volumes: list, model: Any, output_segmentation=None,
                 device: str = "auto", schedule: MainThreadQueue | None = None,
                 on_progress: Callable[[float, str], None] | None = None,
                 on_done: Callable[["SegmentJob"], None] | None = None,
                 on_worker_progress: Callable[[float, str], None] | None = None) -> None:
        if not input_volumes:
            raise ValueError("no input volume given; select at least one volume node")
        self.logic, self.input_volumes, self.model = logic, list(input_volumes), model
        self.output_segmentation, self.device = output_segmentation, device
        self.schedule = schedule or MainThreadQueue()
        self.on_progress, self.on_done = on_progress, on_done
        self.on_worker_progress = on_worker_progress  # runs on the worker thread: must be thread-safe, no nodes
        self.cancel_token = CancelToken()
        self.state = RUNNING
        self.node = None
        self.error: BaseException | None = None
        self.progress, self.stage = 0.0, ""
        self.timings: dict[str, float] = {}
        self.device_used = ""
        self.started = time.perf_counter()
        self.elapsed = 0.0
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._work, name="MedAISegment", daemon=True)

    # -- control ---------------------------------------------------------------------------------
    def start(self) -> "SegmentJob":
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the job to stop at its next check point; the scene stays unchanged."""
        self.cancel_token.cancel()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None, poll: Callable[[], Any] | None = None):
        """Drain the main-thread queue until the job is done; returns the node or raises the job's error.

        ``poll`` runs between waits (in Slicer: ``slicer.app.processEvents`` keeps the GUI alive).
        """
        deadline = None if timeout is None else time.perf_counter() + timeout
        while not self.done:
            if deadline is not None and time.perf_counter() > deadline:
                raise TimeoutError(f"segmentation with {self.model} still running after {timeout} s")
            self.schedule.process_pending(timeout=0.05)
            if poll is not None:
                poll()
        if self.state == SUCCEEDED:
            return self.node
        raise self.error if self.error is not None else Cancelled("cancelled by the user")

    # -- worker thread ---------------------------------------------------------------------------
    def _report(self, fraction: float, stage: str) -> None:
        self.progress, self.stage = fraction, stage
        if self.on_worker_progress is not None:
            self.on_worker_progress(fraction, stage)
        if self.on_progress is not None:
            self.schedule(lambda: self.on_progress(fraction, stage) if not self.done else None)

    def _work(self) -> None:
        try:
            result = self.logic.compute(self.input_volumes, self.model, self.device, self._report, self.cancel_token)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the main thread
            self.schedule(lambda error=exc: self._finish(None, error))
        else:
            self.schedule(lambda: self._apply(result))

    # -- main thread -----------------------------------------------------------------------------
    def _apply(self, result) -> None:
        try:
            self.cancel_token.check()  # cancelled after compute: still leave the scene alone
            for node in self.input_volumes:
                if node.GetScene() is None:
                    raise RuntimeError(f"{node.GetName()}: the input volume was removed from the scene while the model ran")
            node = self.logic.apply(result, self.input_volumes[0], self.output_segmentation)
        except BaseException as exc:  # noqa: BLE001
            self._finish(None, exc)
            return
        self._finish(node, None)

    def _finish(self, node, error: BaseException | None) -> None:
        self.elapsed = time.perf_counter() - self.started
        self.node, self.error = node, error
        if error is None:
            self.state = SUCCEEDED
            self.timings = dict(self.logic.last_timings)
            self.device_used = self.logic.last_result.device if self.logic.last_result else ""
        else:
            self.state = CANCELLED if isinstance(error, Cancelled) else FAILED
            if self.state == FAILED:
                log.error("MedAI segmentation failed: %s", error)
        self._finished.set()
        if self.on_done is not None:
            self.on_done(self)


class SegmentRunner:
    """The console / module API below the widget: ``segment(...)`` waits or returns a running job."""

    def __init__(self, schedule: MainThreadQueue | None = None, logic: SegmentLogic | None = None) -> None:
        self.schedule = schedule or MainThreadQueue()
        self.logic = logic or SegmentLogic()
        self.job: SegmentJob | None = None

    def segment(self, input_volumes, model, output_segmentation=None, device: str = "auto",
                wait_for_completion: bool = True, progress: Callable[[float, str], None] | None = None,
                completed: Callable[[SegmentJob], None] | None = None, poll: Callable[[], Any] | None = None):
        """Segment ``input_volumes`` (a node or list; the first defines the grid) with ``model``.

        Waits and returns the segmentation node (raising the run's error), or with
        ``wait_for_completion=False`` returns the started :class:`SegmentJob` at once; ``progress(fraction, stage)``
        and ``completed(job)`` are then called on the main thread.
        """
        if self.job is not None and not self.job.done:
            raise RuntimeError("a segmentation is already running; cancel it or wait for it first")
        nodes = list(input_volumes) if isinstance(input_volumes, (list, tuple)) else [input_volumes]
        if any(n is None for n in nodes):
            raise ValueError("an input volume is not set; select a volume node for every model input")
        self.job = SegmentJob(self.logic, nodes, model, output_segmentation, device, self.schedule, progress, completed)
        self.job.start()
        return self.job.wait(poll=poll) if wait_for_completion else self.job
