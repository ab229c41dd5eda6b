"""Cohorts: one model over many cases, resumable, one case's failure isolated, locally or on a Ray cluster.

A case is one image file, one DICOM series folder, one folder of channel images, or one CSV row
(``case,image[,image2...]``). Workers (this process, ``workers`` spawned processes, or Ray actors)
load the model once and return each case's output as bytes plus a table row; only this process
writes into the output folder: each output goes to a temporary file that is renamed into place
(complete or absent), and ``results.csv`` gets its row as the case finishes. A rerun skips the
cases whose row says ``ok`` and whose output is there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.progress import Cancelled, CancelToken, ProgressCallback
from .cases import IMAGE_SUFFIXES, SEGMENT_FORMATS, Case, cases_from_csv, cases_from_folder, find_cases, output_name
from .cohort import CohortItem, cohort_case, cohort_case_name, read_cohort_case, run_cohort
from .executors import RAY_INSTALL, import_ray, run_pool, run_ray
from .table import PARTIAL, RESULTS, ResultsTable, commit_output, defer_sigint, remove_partial
from .worker import CaseRunner, default_task, model_id

__all__ = ["IMAGE_SUFFIXES", "PARTIAL", "RAY_INSTALL", "RESULTS", "SEGMENT_FORMATS", "BatchSummary", "Case", "CaseRunner",
           "CohortItem", "ResultsTable", "cases_from_csv", "cases_from_folder", "cohort_case", "cohort_case_name",
           "commit_output", "default_task", "find_cases", "model_id", "output_name", "read_cohort_case", "run_batch",
           "run_cohort"]


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


def _pending(cases: list[Case], table: ResultsTable, outdir: Path, task: str, fmt: str) -> list[Case]:
    """The cases still to run: not ok in the table or their output gone; a file nobody's row claims is never overwritten."""
    table.compact(c.name for c in cases)  # also tidies a row cut short by a crash
    done = table.completed()
    todo = [c for c in cases if not (c.name in done and done[c.name].get("output") == output_name(c, task, fmt)
                                      and (outdir / output_name(c, task, fmt)).is_file())]
    foreign = [output_name(c, task, fmt) for c in todo if (outdir / output_name(c, task, fmt)).exists()]
    if foreign:
        raise FileExistsError(f"{outdir} already has {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''} without an ok row in "
                              f"{RESULTS}; move or delete them (they are not overwritten), or choose another output folder")
    return todo


def run_batch(source: str | os.PathLike | list[Case], model, outdir: str | os.PathLike, task: str | None = None,
              workers: int = 1, device: str = "auto", fmt: str = ".seg.nrrd", ray_address: str | None = None,
              callback: ProgressCallback | None = None, cancel: CancelToken | None = None, trust: bool = False) -> BatchSummary:
    """Run ``model`` over the cases of ``source`` (folder, CSV or list of :class:`Case`) into ``outdir``.

    ``workers`` > 1: that many processes, each loading the model once. ``ray_address`` (``auto``, an
    address, or ``local`` for a Ray started here): one actor per worker on that cluster (inputs must be
    readable there). ``callback(fraction, stage)`` reports progress over the whole cohort; ``cancel`` or
    Ctrl-C stops the run, leaving only complete outputs (the summary says ``interrupted``). ``trust``: run a
    model that would run code (see :mod:`medai.models.trust`), in every worker.
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
        local = CaseRunner(model, device, task, fmt, trust)
        task, loaded = local.task, local.model
    else:
        from ..models.loader import load_model

        loaded = load_model(model, "cpu", trust=trust)  # its task and identity; the workers load their own
        task = task or default_task(loaded)
    identity = model_id(loaded)
    table = ResultsTable(outdir / RESULTS)
    others = {r.get("model") for r in table.rows if r.get("status") == "ok"} - {identity, None, ""}
    if others:
        raise ValueError(f"{outdir} holds results of another model ({', '.join(sorted(others))}; this one is {identity}); "
                         f"use another output folder, or delete {outdir / RESULTS} to redo every case")
    todo = _pending(cases, table, outdir, task, fmt)
    summary = BatchSummary(len(cases), task, skipped=len(cases) - len(todo))
    n_todo = max(len(todo), 1)

    def report(fraction: float, stage: str) -> None:
        if callback is not None:
            callback(fraction, stage)

    def finish(case: Case, row: dict, data: bytes | None) -> None:
        row["model"] = identity
        with defer_sigint():
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
            run_ray(ray_address, todo, workers, model, device, task, fmt, finish, cancel, trust)
        elif local is None:
            run_pool(todo, workers, model, device, task, fmt, finish, cancel, trust)
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
        remove_partial(outdir)
    return summary


