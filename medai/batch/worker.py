"""One worker: the model loaded once, then case after case, each turned into a table row and its output's bytes."""

from __future__ import annotations

import csv
import io
import logging
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable

from ..engine.progress import Cancelled, CancelToken, ProgressCallback
from ..requests import ClassifyRequest
from .cases import SEGMENT_FORMATS, Case

log = logging.getLogger(__name__)


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

    from ..fetch import sha256_of

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


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (ValueError, RuntimeError, OSError)) else f"{type(exc).__name__}: {text}"


class CaseRunner:
    """Loads the model once; :meth:`run` turns one case into a table row and its output's bytes."""

    def __init__(self, model, device: str = "auto", task: str | None = None, fmt: str = ".seg.nrrd", trust: bool = False) -> None:
        from ..models.loader import LoadedModel, load_model

        start = time.perf_counter()
        self.model = model if isinstance(model, LoadedModel) else load_model(model, device, trust=trust)
        self.load_s = time.perf_counter() - start
        self.task = task or default_task(self.model)
        if self.task not in ("segment", "classify"):
            raise ValueError(f"task {self.task!r}: use segment or classify")
        if fmt not in SEGMENT_FORMATS:
            raise ValueError(f"output format {fmt!r}: use one of {', '.join(SEGMENT_FORMATS)}")
        self.fmt = fmt

    def run(self, case: Case, callback: ProgressCallback | None = None, cancel: CancelToken | None = None) -> tuple[dict, bytes | None]:
        """``(row, output bytes)``; a failure gives a ``failed`` row with the error and no bytes. Cancelled propagates."""
        from ..io import read_image

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
                row["error"], data = one_line(exc), None
        row["time_s"] = round(time.perf_counter() - start, 3)
        row["warnings"] = " | ".join(dict.fromkeys(notes + captured.messages))
        return row, data

    def _segment(self, volumes, row: dict, callback, cancel) -> bytes:
        from ..engine.segment import segment
        from ..results import write_segmentation

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
        from ..engine.classify import classify

        result = classify(self.model, volumes, None, ClassifyRequest(explain=False), callback, cancel)
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


