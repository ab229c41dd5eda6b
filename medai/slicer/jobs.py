"""Background model runs: compute on a worker thread, apply on the main thread.

Qt-free, and the one way MedAI runs a model from a panel or the console. A :class:`Job` takes
three callables:

* ``prepare()`` (optional) runs on the calling (main) thread when the job starts: it reads the
  nodes (voxels, region masks) so that the worker never touches the scene; every array in what it
  returns that views a node's buffer is copied there (:func:`detach_arrays`), because the GUI stays
  live while the model runs and the user may change or delete that volume;
* ``compute(prepared, progress, cancel)`` runs on the worker thread and touches no node;
* ``apply(result)`` runs on the main thread and puts the finished result into the scene.

The scene change and every user callback are handed to a :class:`MainThreadQueue` that the
main thread drains:

* headless and in tests: ``job.wait()`` (or ``queue.process_pending()``) drains it on the calling thread;
* in Slicer: ``MedAILib.QueuePump`` drains it from a ``qt.QTimer`` that lives on the main thread
  (a timer created on the worker thread would never fire: that thread has no event loop).

A failed or cancelled job leaves the scene as it was: no node is created before the result is
complete, and nodes that a failing ``apply`` added are removed again.

:class:`SegmentRunner` (:class:`SegmentLogic`), :class:`ClassifyRunner` (:class:`ClassifyLogic`) and
:class:`TrainRunner` (:func:`medai.training.train`) are thin users of :class:`Job` and :class:`JobRunner`.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..engine.progress import CancelToken, Cancelled
from . import scene as bridge
from ..requests import ClassifyRequest, request_from
from .classify_logic import ClassifyLogic, ClassifyOutput
from .segment_logic import SegmentLogic

log = logging.getLogger(__name__)

RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"

ProgressFn = Callable[[float, str], None]


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


def detach_arrays(value):
    """``value`` with every numpy array that views another buffer (a volume node's voxels) copied.

    Walks lists, tuples, dicts and dataclasses (:class:`medai.geometry.Volume`, training cases); other
    objects are kept as they are. Arrays that own their data are not copied.
    """
    if isinstance(value, np.ndarray):
        return value if value.flags.owndata else value.copy()
    if isinstance(value, list):
        return [detach_arrays(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(detach_arrays(v) for v in value)
    if isinstance(value, dict):
        return {k: detach_arrays(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            current = getattr(value, f.name)
            detached = detach_arrays(current)
            if detached is not current:
                value = dataclasses.replace(value, **{f.name: detached}) if f.init else value
        return value
    return value


def _node_nodes(value) -> list:
    """The MRML nodes in an input argument (a node, a ``(node, segment)`` pair, a list of them, or None)."""
    if value is None or isinstance(value, str):
        return []
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in _node_nodes(item)]
    return [value] if hasattr(value, "GetScene") else []


class Job:
    """One model run. ``state`` is running, succeeded, failed or cancelled; ``output`` what apply returned.

    ``input_nodes`` are checked, before apply, to be still in the scene; the scene of the first
    one is restored if apply fails half-way. ``what`` names the run in messages ("segmentation
    with deepbet-brain").
    """

    kind = "run"

    def __init__(self, compute: Callable[[Any, ProgressFn, CancelToken], Any], apply: Callable[[Any], Any],
                 input_nodes: list, what: str, prepare: Callable[[], Any] | None = None,
                 schedule: MainThreadQueue | None = None, on_progress: ProgressFn | None = None,
                 on_done: Callable[["Job"], None] | None = None, on_worker_progress: ProgressFn | None = None) -> None:
        self._compute, self._apply_fn, self._prepare = compute, apply, prepare
        self.input_nodes, self.what = list(input_nodes), what
        self.schedule = schedule or MainThreadQueue()
        self.on_progress, self.on_done = on_progress, on_done
        self.on_worker_progress = on_worker_progress  # runs on the worker thread: must be thread-safe, no nodes
        self.cancel_token = CancelToken()
        self.state = RUNNING
        self.output: Any = None
        self.result: Any = None  # what compute returned (SegmentationResult, ClassificationResult)
        self.error: BaseException | None = None
        self.progress, self.stage = 0.0, ""
        self.timings: dict[str, float] = {}
        self.device_used = ""
        self.started = time.perf_counter()
        self.elapsed = 0.0
        self._finished = threading.Event()
        self._computed = threading.Event()  # the worker's part is over (result or error queued for the main thread)
        self._thread = threading.Thread(target=self._work, name=f"MedAI {self.kind}", daemon=True)
        self._prepared: Any = None

    # -- control ---------------------------------------------------------------------------------
    def start(self) -> "Job":
        """Run ``prepare`` here (main thread), then ``compute`` on the worker; a prepare error fails the job."""
        self.started = time.perf_counter()
        scene = self.input_nodes[0].GetScene() if self.input_nodes else None
        before = bridge.node_ids(scene) if scene is not None and self._prepare is not None else set()
        try:
            # copies, not views: the worker must not read a buffer the live GUI can change or free
            self._prepared = detach_arrays(self._prepare()) if self._prepare is not None else None
        except BaseException as exc:  # noqa: BLE001 - reported like any other failure, through the queue
            self.schedule(lambda error=exc: self._finish(None, error))
            return self
        finally:
            if before:  # prepare only reads: drop helper nodes a reader left (slicer.util's temporary labelmaps)
                bridge.remove_nodes_added_since(scene, before)
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the job to stop at its next check point; the scene stays unchanged."""
        self.cancel_token.cancel()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def wait_computed(self, timeout: float) -> None:
        """Block until the worker has finished computing (its result waits in the queue); TimeoutError after ``timeout`` s."""
        if not self._computed.wait(timeout):
            raise TimeoutError(f"{self.what}: the worker still computes after {timeout} s")

    def wait(self, timeout: float | None = None, poll: Callable[[], Any] | None = None):
        """Drain the main-thread queue until the job is done; returns the output or raises the job's error.

        ``poll`` runs between waits (in Slicer: ``slicer.app.processEvents`` keeps the GUI alive).
        """
        deadline = None if timeout is None else time.perf_counter() + timeout
        while not self.done:
            if deadline is not None and time.perf_counter() > deadline:
                raise TimeoutError(f"{self.what} still running after {timeout} s")
            self.schedule.process_pending(timeout=0.05)
            if poll is not None:
                poll()
        if self.state == SUCCEEDED:
            return self.output
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
            result = self._compute(self._prepared, self._report, self.cancel_token)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the main thread
            self.schedule(lambda error=exc: self._finish(None, error))
        else:
            self.schedule(lambda: self._apply(result))
        finally:
            self._computed.set()

    # -- main thread -----------------------------------------------------------------------------
    def _apply(self, result) -> None:
        scene = self.input_nodes[0].GetScene() if self.input_nodes else None
        try:
            with bridge.all_or_nothing(scene) if scene is not None else nullcontext():
                self.cancel_token.check()  # cancelled after compute: still leave the scene alone
                for node in self.input_nodes:
                    if node.GetScene() is None:
                        raise RuntimeError(f"{node.GetName()}: the input was removed from the scene while the model ran; "
                                           "add it again and run once more")
                start = time.perf_counter()
                output = self._apply_fn(result)
                apply_s = time.perf_counter() - start
        except BaseException as exc:  # noqa: BLE001
            self._finish(None, exc)
            return
        self.result = result
        self.timings = dict(getattr(result, "timings", {}) or {})
        self.timings.setdefault("scene", apply_s)
        self.device_used = str(getattr(result, "device", "") or "")
        self._finish(output, None)

    def _finish(self, output, error: BaseException | None) -> None:
        self.elapsed = time.perf_counter() - self.started
        self.output, self.error = output, error
        if error is None:
            self.state = SUCCEEDED
        else:
            self.state = CANCELLED if isinstance(error, Cancelled) else FAILED
            if self.state == FAILED:
                log.error("MedAI %s failed: %s", self.what, error)
        self._finished.set()
        if self.on_done is not None:
            self.on_done(self)


class JobRunner:
    """Runs one :class:`Job` at a time: waits for it, or returns it running (callbacks on the main thread)."""

    def __init__(self, schedule: MainThreadQueue | None = None) -> None:
        self.schedule = schedule or MainThreadQueue()
        self.job: Job | None = None

    def run(self, job: Job, wait_for_completion: bool = True, poll: Callable[[], Any] | None = None):
        """Start ``job``; return its output (raising its error) or, without waiting, the running job."""
        if self.job is not None and not self.job.done:
            raise RuntimeError(f"a {self.job.kind} is already running; cancel it or wait for it first")
        self.job = job
        job.start()
        return job.wait(poll=poll) if wait_for_completion else job


# --- segmentation ------------------------------------------------------------------------------


class SegmentJob(Job):
    """One segmentation run; ``node`` is the output segmentation node."""

    kind = "segmentation"

    def __init__(self, logic: SegmentLogic, input_volumes: list, model: Any, output_segmentation=None,
                 device: str = "auto", schedule: MainThreadQueue | None = None,
                 on_progress: ProgressFn | None = None, on_done: Callable[["SegmentJob"], None] | None = None,
                 on_worker_progress: ProgressFn | None = None, trust: bool = False) -> None:
        self.logic, self.input_volumes, self.model = logic, bridge.volume_node_list(input_volumes), model
        self.output_segmentation, self.device = output_segmentation, device
        super().__init__(
            # voxels are read here, on the main thread; the worker only runs the model
            prepare=lambda: logic.read_inputs(self.input_volumes),
            compute=lambda volumes, progress, cancel: logic.compute_volumes(volumes, model, device, progress, cancel, trust),
            apply=lambda result: logic.apply(result, self.input_volumes[0], output_segmentation),
            input_nodes=self.input_volumes + _node_nodes(output_segmentation), what=f"segmentation with {model}",
            schedule=schedule,
            on_progress=on_progress, on_done=on_done, on_worker_progress=on_worker_progress)

    @property
    def node(self):
        """The segmentation node (None until the job succeeded)."""
        return self.output


class SegmentRunner(JobRunner):
    """The console / module API below the widget: ``segment(...)`` waits or returns a running job."""

    def __init__(self, schedule: MainThreadQueue | None = None, logic: SegmentLogic | None = None) -> None:
        super().__init__(schedule)
        self.logic = logic or SegmentLogic()

    def segment(self, input_volumes, model, output_segmentation=None, device: str = "auto",
                wait_for_completion: bool = True, progress: ProgressFn | None = None,
                completed: Callable[[SegmentJob], None] | None = None, poll: Callable[[], Any] | None = None,
                trust: bool = False):
        """Segment ``input_volumes`` (a node or list; the first defines the grid) with ``model``.

        Waits and returns the segmentation node (raising the run's error), or with
        ``wait_for_completion=False`` returns the started :class:`SegmentJob` at once; ``progress(fraction, stage)``
        and ``completed(job)`` are then called on the main thread. ``trust=True`` runs a model that
        would run code (see :mod:`medai.models.trust`).
        """
        nodes = bridge.volume_node_list(input_volumes)
        job = SegmentJob(self.logic, nodes, model, output_segmentation, device, self.schedule, progress, completed, trust=trust)
        return self.run(job, wait_for_completion, poll)


# --- classification ----------------------------------------------------------------------------


class ClassifyJob(Job):
    """One classification run; ``output`` is a :class:`ClassifyOutput` (table, chart, heatmap, findings nodes).

    The volumes and the region are read on the main thread when the job starts (a segmentation
    may convert its representation, which must not happen on a worker thread); the worker
    only runs the model.
    """

    kind = "classification"

    def __init__(self, logic: ClassifyLogic, input_volumes: list, model: Any, region=None,
                 request: ClassifyRequest = ClassifyRequest(), schedule: MainThreadQueue | None = None,
                 on_progress: ProgressFn | None = None, on_done: Callable[["ClassifyJob"], None] | None = None,
                 on_worker_progress: ProgressFn | None = None) -> None:
        self.logic, self.input_volumes, self.model = logic, bridge.volume_node_list(input_volumes), model
        self.region, self.request = region, request
        super().__init__(
            prepare=lambda: logic.read_inputs(self.input_volumes, region),
            compute=lambda inputs, progress, cancel: logic.compute_volumes(inputs[0], inputs[1], model, request, progress, cancel),
            apply=logic.apply,
            input_nodes=self.input_volumes + _node_nodes(region), what=f"classification with {model}",
            schedule=schedule, on_progress=on_progress, on_done=on_done, on_worker_progress=on_worker_progress)

    @property
    def classify_output(self) -> ClassifyOutput | None:
        return self.output


class ClassifyRunner(JobRunner):
    """The console / module API below the widget: ``classify(...)`` waits or returns a running job."""

    def __init__(self, schedule: MainThreadQueue | None = None, logic: ClassifyLogic | None = None) -> None:
        super().__init__(schedule)
        self.logic = logic or ClassifyLogic()

    def classify(self, input_volumes, model, region=None, wait_for_completion: bool = True,
                 progress: ProgressFn | None = None, completed: Callable[[ClassifyJob], None] | None = None,
                 poll: Callable[[], Any] | None = None, **options):
        """Classify ``input_volumes`` (a node or list: channels of one case, or a cohort) with ``model``.

        ``region``: None, a segmentation node (all its segments), ``(segmentation node, segment ID or
        name)``, a markups ROI or a labelmap node. ``options``: the fields of
        :class:`~medai.requests.ClassifyRequest` (device, explain, target_class, method, margin,
        hotspot_threshold). Waits and returns the :class:`ClassifyOutput` (raising the run's error),
        or with ``wait_for_completion=False`` returns the started :class:`ClassifyJob` at once;
        ``progress(fraction, stage)`` and ``completed(job)`` are then called on the main thread.
        """
        nodes = bridge.volume_node_list(input_volumes)
        job = ClassifyJob(self.logic, nodes, model, region, request_from(ClassifyRequest, options), self.schedule, progress, completed)
        return self.run(job, wait_for_completion, poll)


# --- training ----------------------------------------------------------------------------------


@dataclass
class TrainOutput:
    """What a finished training run put into the scene, and where the model is."""

    model_dir: Path
    card_path: Path | None
    chart: Any  # vtkMRMLPlotChartNode: loss and validation metric per epoch
    table: Any  # vtkMRMLTableNode: the per-epoch history
    result: Any  # medai.training.TrainResult


def _training_source(source) -> tuple[str, list]:
    """``(task, input nodes)`` of a Train section source: ``[(volume, segmentation), ...]`` or a table node."""
    from ..training.recipes import RecipeSource

    if isinstance(source, RecipeSource):  # a catalog recipe: its data is fetched and read on the worker
        return source.task, []
    if source is None:
        raise ValueError("no training data given; pick volumes with segmentations, or a table node with "
                         "'volume' and 'class' columns")
    if hasattr(source, "IsA"):
        if not source.IsA("vtkMRMLTableNode"):
            raise ValueError(f"{source.GetName()}: classification training reads a table node with 'volume' and "
                             "'class' columns; choose a table node")
        return "classification", [source]
    pairs = list(source)
    if not pairs:
        raise ValueError("no volume/segmentation pairs given; check at least one volume that has a segmentation")
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or any(n is None for n in pair):
            raise ValueError(f"{pair!r}: each segmentation training case is a (volume node, segmentation node) pair")
    return "segmentation", [n for pair in pairs for n in pair]


class TrainJob(Job):
    """One training run: the cases are read from the scene on the main thread, ``trainer.train`` runs on the worker.

    Progress is ``(fraction, text)`` with epoch, loss, validation metric and time left
    (:meth:`medai.training.TrainEvent.text`); ``on_event`` also gets each
    :class:`medai.training.TrainEvent` on the main thread. On success a training-curves chart and a
    metrics table are added, ``register(model_dir)`` is called (it lists the model in the
    selectors) and ``output`` is a :class:`TrainOutput`. Cancel keeps the best checkpoint on disk
    (``train_result.card_path``) but adds no node and registers nothing.
    """

    kind = "training"

    def __init__(self, source, out_dir: str | Path, config, schedule: MainThreadQueue | None = None,
                 on_progress: ProgressFn | None = None, on_done: Callable[["TrainJob"], None] | None = None,
                 on_event: Callable[[Any], None] | None = None, register: Callable[[str], Any] | None = None) -> None:
        from .training_bridge import classification_cases_from_table, segmentation_cases_from_scene

        task, nodes = _training_source(source)
        if task == "classification" and config.task == "regression":
            raise ValueError("regression training from a table node is not supported: the table's 'class' column is "
                             "read as class names; train a classification model here, or train regression on a CSV "
                             "of volumes and values with 'medai train --task regression'")
        if config.task != task:
            raise ValueError(f"the training data is for {task} but the configuration asks for {config.task}; "
                             "use volume/segmentation pairs for segmentation and a table node for classification")
        if not out_dir:
            raise ValueError("no output folder given; choose a folder for the trained model")
        self.source, self.out_dir, self.config = source, Path(out_dir), config
        self.on_event, self.register = on_event, register
        self.train_result: Any = None  # the TrainResult, also after cancel (the kept best checkpoint)
        self.last_event: Any = None
        read = (lambda: classification_cases_from_table(source)) if task == "classification" else \
            (lambda: segmentation_cases_from_scene(list(source)))
        if not nodes:  # a RecipeSource: nothing to read from the scene
            read = None
        super().__init__(prepare=read, compute=self._train, apply=self._apply_training, input_nodes=nodes,
                         what=f"training of {config.name or self.out_dir.name}", schedule=schedule,
                         on_progress=on_progress, on_done=on_done)

    @property
    def model_dir(self) -> Path | None:
        """The trained model's folder (None until the job succeeded)."""
        return self.output.model_dir if self.output is not None else None

    def _train(self, data, progress: ProgressFn, cancel: CancelToken):
        from ..training import train

        def on_event(event) -> None:
            self.last_event = event
            progress(event.fraction, event.text())
            if self.on_event is not None:
                self.schedule(lambda: self.on_event(event) if not self.done else None)

        if data is None:  # a RecipeSource: fetch (MD5-checked) and read its data here, off the GUI thread
            progress(0.0, "fetching the recipe's data")
            data = self.source.load()
        self.train_result = train(data, self.out_dir, self.config, callback=on_event, cancel=cancel)
        if self.train_result.stopped == "cancelled":
            raise Cancelled(f"training cancelled; the best checkpoint (epoch {self.train_result.best_epoch}) "
                            f"is kept in {self.out_dir}")
        if self.train_result.card_path is None:
            raise RuntimeError(f"{self.out_dir}: training wrote no model; give more cases or more epochs")
        return self.train_result

    def _apply_training(self, result) -> TrainOutput:
        from .training_bridge import history_table, training_curves_chart

        import slicer

        scene = self.input_nodes[0].GetScene() if self.input_nodes else slicer.mrmlScene
        name = self.config.name or self.out_dir.name
        chart = training_curves_chart(scene, result.history, result.metric_name, name=f"{name} training")
        table = history_table(scene, result.history, result.metric_name, name=f"{name} training metrics")
        if self.register is not None:
            self.register(str(result.model_dir))
        return TrainOutput(Path(result.model_dir), result.card_path, chart, table, result)


class TrainRunner(JobRunner):
    """The console / module API below the Train section: ``train(...)`` waits or returns a running job."""

    def train(self, source, out_dir: str | Path, config, wait_for_completion: bool = True,
              progress: ProgressFn | None = None, completed: Callable[[TrainJob], None] | None = None,
              on_event: Callable[[Any], None] | None = None, register: Callable[[str], Any] | None = None,
              poll: Callable[[], Any] | None = None):
        """Train on ``source`` (``[(volume, segmentation), ...]`` or a table node) into ``out_dir`` with ``config``.

        Waits and returns the :class:`TrainOutput` (raising the run's error; a cancel raises
        :class:`Cancelled`), or with ``wait_for_completion=False`` returns the started :class:`TrainJob`
        at once; ``progress(fraction, text)``, ``on_event(TrainEvent)`` and ``completed(job)`` are
        then called on the main thread. ``register(model_dir)`` lists the finished model (see
        :func:`medai.slicer.panel.add_model`).
        """
        job = TrainJob(source, out_dir, config, self.schedule, progress, completed, on_event, register)
        return self.run(job, wait_for_completion, poll)
