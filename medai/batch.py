"""Cohorts: one model over many cases, resumable, one case's failure isolated, locally or on a Ray cluster.

A case is one image file, one DICOM series folder, one folder of channel images, or one CSV row
(``case,image[,image2...]``). Workers (this process, ``workers`` spawned processes, or Ray actors)
load the model once and return each case's output as bytes plus a table row; only this process
writes into the output folder: each output goes to a temporary file that is renamed into place
(complete or absent), and ``results.csv`` gets its row as the case finishes. A rerun skips the
cases whose row says ``ok`` and whose output is there.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import signal
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable

from .engine.progress import Cancelled, CancelToken, ProgressCallback

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")
SEGMENT_FORMATS = (".seg.nrrd", ".nii.gz", ".nrrd", ".mha")
RESULTS = "results.csv"
PARTIAL = ".medai-partial"  # temporary outputs, renamed into place when complete
HEAD = ["case", "status", "output", "time_s"]
TAIL = ["model", "warnings", "error"]
RAY_INSTALL = "pip install ray==2.60.0"


# --- cases ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One case: a name (its output's name) and its image paths (the channels, first defines the grid)."""

    name: str
    images: tuple[str, ...]


def _image_suffix(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in IMAGE_SUFFIXES if lower.endswith(s)), None)


def _is_dicom_folder(folder: Path) -> bool:
    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # no ITK warning for a folder that is not DICOM
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def cases_from_folder(folder: Path) -> list[Case]:
    """One case per image file, per DICOM series sub-folder, or per sub-folder of channel images."""
    cases = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            channels = [str(p) for p in sorted(entry.iterdir()) if p.is_file() and _image_suffix(p.name)]
            if channels:
                cases.append(Case(entry.name, tuple(channels)))
            elif _is_dicom_folder(entry):
                cases.append(Case(entry.name, (str(entry),)))
            else:
                log.warning("%s: no image files or DICOM series in this folder; skipped", entry)
        elif suffix := _image_suffix(entry.name):
            cases.append(Case(entry.name[: -len(suffix)], (str(entry),)))
    return cases


def cases_from_csv(path: Path) -> list[Case]:
    """Rows ``case,image[,image2...]`` (a header row starting with ``case`` is skipped); paths relative to the CSV."""
    cases = []
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            cells = [c.strip() for c in row if c.strip()]
            if not cells or cells[0].startswith("#") or (n == 1 and cells[0].lower() == "case"):
                continue
            if len(cells) < 2:
                raise ValueError(f"{path} line {n}: expected case,image[,image2...], got {','.join(row)!r}")
            images = tuple(str(Path(c) if Path(c).is_absolute() else path.parent / c) for c in cells[1:])
            cases.append(Case(cells[0], images))
    return cases


def find_cases(source: str | os.PathLike) -> list[Case]:
    """The cases of a folder or a CSV file; errors name the input and what to change."""
    source = Path(source)
    if source.is_dir():
        cases = cases_from_folder(source)
    elif source.is_file() and source.suffix.lower() == ".csv":
        cases = cases_from_csv(source)
    else:
        raise FileNotFoundError(f"input {source}: give a folder of cases or a CSV file (case,image[,image2...])")
    if not cases:
        raise ValueError(f"input {source}: no cases found (image files {', '.join(IMAGE_SUFFIXES)}, DICOM series folders or folders of channels)")
    seen: dict[str, Case] = {}
    for case in cases:
        if not case.name or "/" in case.name or "\\" in case.name or case.name.startswith("."):
            raise ValueError(f"input {source}: case name {case.name!r} cannot be a file name; rename it")
        if case.name in seen:
            raise ValueError(f"input {source}: two cases are named {case.name!r} ({seen[case.name].images[0]} and {case.images[0]}); rename one")
        seen[case.name] = case
    return cases


def output_name(case: Case | str, task: str, fmt: str = ".seg.nrrd") -> str:
    name = case.name if isinstance(case, Case) else case
    return f"{name}{fmt}" if task == "segment" else f"{name}.scores.csv"


def default_task(model) -> str:
    """``segment`` or ``classify`` from the model's task; multi-label models need to be told."""
    task = model.card.task
    if task == "segmentation":
        return "segment"
    if task in ("classification", "regression"):
        return "classify"
    raise ValueError(f"model {model.name} is a {task} model, which can segment or classify; choose --task segment or --task classify")


def _strings(value) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def model_id(model) -> str:
    """``name sha`` of the model's card and files (a bundle folder's files, or a card/file and the files its card names)."""
    import hashlib
    import json

    from .fetch import sha256_of

    digest = hashlib.sha256(json.dumps(model.card.raw, sort_keys=True, default=str).encode())
    source = Path(model.source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file())
    else:
        files = [source] + sorted({source.parent / s for s in _strings(model.card.raw)
                                   if "/" not in s and s not in (".", "..") and (source.parent / s).is_file()} - {source})
    for f in files:
        digest.update(f"{f.relative_to(source if source.is_dir() else source.parent)}:{sha256_of(f)}".encode())
    return f"{model.name} {digest.hexdigest()[:12]}"


# --- one worker: the model loaded once, then case after case -------------------------------------


class _WarningCapture(logging.Handler):
    """Collects the warnings logged by this thread while a case runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())

    def __enter__(self) -> "_WarningCapture":
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeHandler(self)


def _column(stage: str) -> str:
    stage = stage.split(": ", 1)[-1]  # classify prefixes its stages with the case name
    return re.sub(r"\W+", "_", stage).strip("_").lower() + "_s"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (ValueError, RuntimeError, OSError)) else f"{type(exc).__name__}: {text}"


class CaseRunner:
    """Loads the model once; :meth:`run` turns one case into a table row and its output's bytes."""

    def __init__(self, model, device: str = "auto", task: str | None = None, fmt: str = ".seg.nrrd") -> None:
        from .models.loader import LoadedModel, load_model

        start = time.perf_counter()
        self.model = model if isinstance(model, LoadedModel) else load_model(model, device)
        self.load_s = time.perf_counter() - start
        self.task = task or default_task(self.model)
        if self.task not in ("segment", "classify"):
            raise ValueError(f"task {self.task!r}: use segment or classify")
        if fmt not in SEGMENT_FORMATS:
            raise ValueError(f"output format {fmt!r}: use one of {', '.join(SEGMENT_FORMATS)}")
        self.fmt = fmt

    def run(self, case: Case, callback: ProgressCallback | None = None, cancel: CancelToken | None = None) -> tuple[dict, bytes | None]:
        """``(row, output bytes)``; a failure gives a ``failed`` row with the error and no bytes. Cancelled propagates."""
        from .io import read_image

        row: dict = {"case": case.name, "status": "failed", "output": ""}
        data = None
        start = time.perf_counter()
        notes: list[str] = []
        with _WarningCapture() as captured:
            try:
                t = time.perf_counter()
                volumes = [read_image(p) for p in case.images]
                row["read_s"] = round(time.perf_counter() - t, 3)
                data = self._segment(volumes, row, callback, cancel) if self.task == "segment" else self._classify(volumes, row, notes, callback, cancel)
                row["status"] = "ok"
            except (Cancelled, KeyboardInterrupt):
                raise
            except Exception as exc:  # one bad case is recorded; the cohort goes on
                log.info("%s failed", case.name, exc_info=True)
                row["error"], data = _one_line(exc), None
        row["time_s"] = round(time.perf_counter() - start, 3)
        row["warnings"] = " | ".join(dict.fromkeys(notes + captured.messages))
        return row, data

    def _segment(self, volumes, row: dict, callback, cancel) -> bytes:
        from .engine.segment import segment
        from .results import write_segmentation

        result = segment(self.model, volumes, callback, cancel)
        row.update({_column(k): round(v, 3) for k, v in result.timings.items()})
        for item in result.summary():
            row[f"{item['label']} mL"] = item["volume_ml"]
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="medai-case-") as tmp:
            data = write_segmentation(result, Path(tmp) / f"out{self.fmt}").read_bytes()
        row["write_s"] = round(time.perf_counter() - t, 3)
        return data

    def _classify(self, volumes, row: dict, notes: list[str], callback, cancel) -> bytes:
        from .engine.classify import classify

        result = classify(self.model, volumes, None, False, None, "gradcam", callback, cancel)
        if len(result.cases) != 1:
            raise ValueError(f"{len(volumes)} images made {len(result.cases)} cases; give one case's channels per case")
        row.update({_column(k): round(v, 3) for k, v in result.timings.items()})
        scores = result.rows()[0]
        scores.pop("image", None)
        row.update(scores)
        notes += result.warnings
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["case", *scores])
        writer.writeheader()
        writer.writerow({"case": row["case"], **scores})
        return buffer.getvalue().encode()


# --- the results table and atomic outputs --------------------------------------------------------


class ResultsTable:
    """``results.csv``: one row per finished case, appended as it finishes; columns grow as needed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict] = []
        self.fields: list[str] = []
        if path.exists():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                self.rows = [dict(r) for r in reader if r.get("case")]
                self.fields = list(reader.fieldnames or [])

    def completed(self) -> dict[str, dict]:
        """The cases whose latest row says ``ok``."""
        latest = {r["case"]: r for r in self.rows}
        return {name: r for name, r in latest.items() if r.get("status") == "ok"}

    def append(self, row: dict) -> None:
        self.rows.append(row)
        new = [k for k in row if k not in self.fields]
        if new or not self.path.exists():
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)

    def compact(self, order: Iterable[str] = ()) -> None:
        """Keep each case's latest row, in ``order`` first (the cohort's order), then any others."""
        if not self.rows:
            return
        latest = {r["case"]: r for r in self.rows}
        rank = {name: n for n, name in enumerate(order)}
        self.rows = sorted(latest.values(), key=lambda r: rank.get(r["case"], len(rank)))
        self._rewrite()

    def _rewrite(self) -> None:
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        self.fields = HEAD + [k for k in keys if k not in HEAD and k not in TAIL] + TAIL
        tmp = self.path.with_name(self.path.name + ".partial")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)


@contextmanager
def _defer_sigint():
    """Hold Ctrl-C (main thread only) until the block ends, so an output and its table row come together."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *a: caught.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def commit_output(outdir: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``outdir/name`` atomically: a temporary file, flushed, then renamed into place."""
    partial = outdir / PARTIAL
    partial.mkdir(exist_ok=True)
    tmp = partial / name
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    final = outdir / name
    os.replace(tmp, final)
    return final


def _remove_partial(outdir: Path) -> None:
    partial = outdir / PARTIAL
    if partial.is_dir():
        for p in partial.iterdir():
            p.unlink(missing_ok=True)
        partial.rmdir()


# --- the run -------------------------------------------------------------------------------------


@dataclass
class BatchSummary:
    """How a cohort run went; ``rows`` are the rows this run added."""

    total: int
    task: str
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    interrupted: bool = False
    rows: list[dict] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return not self.interrupted and self.failed == 0 and self.ok + self.skipped == self.total


def run_batch(source: str | os.PathLike | list[Case], model, outdir: str | os.PathLike, task: str | None = None,
              workers: int = 1, device: str = "auto", fmt: str = ".seg.nrrd", ray_address: str | None = None,
              callback: ProgressCallback | None = None, cancel: CancelToken | None = None) -> BatchSummary:
    """Run ``model`` over the cases of ``source`` (folder, CSV or list of :class:`Case`) into ``outdir``.

    ``workers`` > 1: that many processes, each loading the model once. ``ray_address`` (``auto``, an
    address, or ``local`` for a Ray started here): one actor per worker on that cluster (inputs must be
    readable there). ``callback(fraction, stage)`` reports progress over the whole cohort; ``cancel`` or
    Ctrl-C stops the run, leaving only complete outputs (the summary says ``interrupted``).
    """
    cases = list(source) if isinstance(source, list) else find_cases(source)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cancel = cancel or CancelToken()
    if (workers > 1 or ray_address) and not isinstance(model, (str, os.PathLike)):
        raise ValueError("with several workers or Ray, give the model as a name or path (each worker loads it)")
    if ray_address:
        import_ray()  # say how to install it before loading anything
    local = None
    if workers <= 1 and not ray_address:
        local = CaseRunner(model, device, task, fmt)
        task, loaded = local.task, local.model
    else:
        from .models.loader import load_model

        loaded = load_model(model, "cpu")  # its task and identity; the workers load their own
        task = task or default_task(loaded)
    identity = model_id(loaded)
    table = ResultsTable(outdir / RESULTS)
    others = {r.get("model") for r in table.rows if r.get("status") == "ok"} - {identity, None, ""}
    if others:
        raise ValueError(f"{outdir} holds results of another model ({', '.join(sorted(others))}; this one is {identity}); "
                         f"use another output folder, or delete {outdir / RESULTS} to redo every case")
    table.compact(c.name for c in cases)  # also tidies a row cut short by a crash
    done = table.completed()
    todo = [c for c in cases if not (c.name in done and done[c.name].get("output") == output_name(c, task, fmt)
                                      and (outdir / output_name(c, task, fmt)).is_file())]
    foreign = [output_name(c, task, fmt) for c in todo if (outdir / output_name(c, task, fmt)).exists()]
    if foreign:
        raise FileExistsError(f"{outdir} already has {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''} without an ok row in "
                              f"{RESULTS}; move or delete them (they are not overwritten), or choose another output folder")
    summary = BatchSummary(len(cases), task, skipped=len(cases) - len(todo))
    n_todo = max(len(todo), 1)

    def report(fraction: float, stage: str) -> None:
        if callback is not None:
            callback(fraction, stage)

    def finish(case: Case, row: dict, data: bytes | None) -> None:
        row["model"] = identity
        with _defer_sigint():
            if row["status"] == "ok" and data is not None:
                row["output"] = commit_output(outdir, output_name(case, task, fmt), data).name
                summary.ok += 1
            else:
                row["status"], summary.failed = "failed", summary.failed + 1
            table.append(row)
        summary.rows.append(row)
        finished = summary.ok + summary.failed
        report(finished / n_todo, f"{finished}/{len(todo)} {case.name} {row['status']}")

    report(0.0, f"0/{len(todo)} ({summary.skipped} done before)")
    try:
        if ray_address:
            _run_ray(ray_address, todo, workers, model, device, task, fmt, finish, cancel)
        elif local is None:
            _run_pool(todo, workers, model, device, task, fmt, finish, cancel)
        else:
            for n, case in enumerate(todo):
                cancel.check()

                def step(fraction: float, stage: str, n: int = n, name: str = case.name) -> None:
                    report((n + fraction) / n_todo, f"{n}/{len(todo)} {name}: {stage}")

                finish(case, *local.run(case, step, cancel))
    except (Cancelled, KeyboardInterrupt):
        summary.interrupted = True
    finally:
        table.compact(c.name for c in cases)
        _remove_partial(outdir)
    return summary


# --- local processes -----------------------------------------------------------------------------

_WORKER: CaseRunner | None = None
_WORKER_ERROR = ""


def _init_worker(model, device: str, task: str, fmt: str, threads: int) -> None:
    global _WORKER, _WORKER_ERROR
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    import torch

    torch.set_num_threads(threads)
    try:
        _WORKER = CaseRunner(model, device, task, fmt)
    except Exception as exc:
        _WORKER_ERROR = f"model {model}: {_one_line(exc)}"


def _run_in_worker(case: Case) -> tuple[dict, bytes | None]:
    if _WORKER is None:
        return {"case": case.name, "status": "failed", "output": "", "error": _WORKER_ERROR}, None
    return _WORKER.run(case)


def _run_pool(todo: list[Case], workers: int, model, device: str, task: str, fmt: str,
              finish: Callable[[Case, dict, bytes | None], None], cancel: CancelToken) -> None:
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(str(model), device, task, fmt, threads))
    futures = {pool.submit(_run_in_worker, c): c for c in todo}
    try:
        pending = set(futures)
        while pending:
            cancel.check()
            ready, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in ready:
                case = futures[fut]
                try:
                    row, data = fut.result()
                except Exception as exc:  # a worker died (out of memory, crash): this case fails, the rest go on
                    row, data = {"case": case.name, "status": "failed", "output": "", "error": f"worker died: {_one_line(exc)}"}, None
                finish(case, row, data)
    finally:
        processes = list(getattr(pool, "_processes", {}).values())  # stop running cases at once
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            p.kill()
        for p in processes:
            p.join(timeout=10)


# --- Ray -----------------------------------------------------------------------------------------


class _RayWorker:
    """A Ray actor holding one loaded model."""

    def __init__(self, model, device: str, task: str, fmt: str) -> None:
        self.runner, self.error = None, ""
        try:
            self.runner = CaseRunner(model, device, task, fmt)
        except Exception as exc:
            self.error = f"model {model}: {_one_line(exc)}"

    def run(self, case: Case) -> tuple[dict, bytes | None]:
        if self.runner is None:
            return {"case": case.name, "status": "failed", "output": "", "error": self.error}, None
        return self.runner.run(case)


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(f"--ray needs Ray, an optional dependency; install it with `{RAY_INSTALL}` (on every node)") from exc
    return ray


def _run_ray(address: str, todo: list[Case], workers: int, model, device: str, task: str, fmt: str,
             finish: Callable[[Case, dict, bytes | None], None], cancel: CancelToken) -> None:
    ray = import_ray()
    if not ray.is_initialized():
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = gpus > 0 and device != "cpu"
    count = workers if workers > 1 else (gpus if use_gpu else 1)
    actor = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(_RayWorker)
    actors = [actor.remote(str(model), device, task, fmt) for _ in range(max(1, min(count, len(todo))))]
    queue = list(reversed(todo))
    running: dict = {}

    def submit(a) -> None:
        if queue:
            case = queue.pop()
            running[a.run.remote(case)] = (a, case)

    try:
        for a in actors:
            submit(a)
        while running:
            cancel.check()
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in ready:
                a, case = running.pop(ref)
                try:
                    row, data = ray.get(ref)
                except Exception as exc:  # the actor died: this case fails, its replacement takes the next
                    row, data = {"case": case.name, "status": "failed", "output": "", "error": f"Ray worker failed: {_one_line(exc)}"}, None
                    a = actor.remote(str(model), device, task, fmt)
                    actors.append(a)
                finish(case, row, data)
                submit(a)
    finally:
        for a in actors:
            ray.kill(a)


# --- Slicer console cohorts ----------------------------------------------------------------------


@dataclass
class CohortItem:
    """One case of a console cohort: its name and the result, or the error that stopped it."""

    name: str
    result: object = None
    error: str = ""


def run_cohort(cases: list, run_case: Callable[[object, ProgressCallback, CancelToken], object],
               name_of: Callable[[object], str], callback: ProgressCallback | None = None,
               cancel: CancelToken | None = None) -> list[CohortItem]:
    """``run_case`` on each case with progress over the cohort; a failing case is recorded and the rest go on.

    ``cancel`` (or a ``Cancelled`` raised by the callback) stops between or inside cases and propagates.
    """
    cancel = cancel or CancelToken()
    items = []
    total = max(len(cases), 1)
    for n, case in enumerate(cases):
        cancel.check()
        name = name_of(case)

        def step(fraction: float, stage: str, n: int = n, name: str = name) -> None:
            if callback is not None:
                callback((n + fraction) / total, f"{n + 1}/{len(cases)} {name}: {stage}")

        try:
            items.append(CohortItem(name, run_case(case, step, cancel)))
        except Cancelled:
            raise
        except Exception as exc:
            log.warning("%s: %s", name, _one_line(exc))
            items.append(CohortItem(name, error=_one_line(exc)))
    if callback is not None:
        callback(1.0, "done")
    return items


def cohort_case(case) -> list:
    """A console cohort's case as a list of its inputs (volume nodes or image paths)."""
    return list(case) if isinstance(case, (list, tuple)) else [case]


def cohort_case_name(case) -> str:
    first = cohort_case(case)[0]
    if hasattr(first, "GetName"):
        return first.GetName()
    name = Path(first).name
    suffix = _image_suffix(name)
    return name[: -len(suffix)] if suffix else name


def read_cohort_case(case, volume_from_node: Callable) -> list:
    """The case's volumes: nodes through ``volume_from_node`` (the Slicer bridge), paths through :func:`medai.io.read_image`."""
    from .io import read_image

    return [read_image(i) if isinstance(i, (str, os.PathLike)) else volume_from_node(i) for i in cohort_case(case)]
