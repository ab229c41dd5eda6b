"""Console cohorts (Slicer logics): a list of cases, one result or error each, progress over the cohort."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..engine.progress import Cancelled, CancelToken, ProgressCallback
from .cases import image_suffix
from .worker import one_line

log = logging.getLogger(__name__)


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
            log.warning("%s: %s", name, one_line(exc))
            items.append(CohortItem(name, error=one_line(exc)))
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
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix else name


def read_cohort_case(case, volume_from_node: Callable) -> list:
    """The case's volumes: nodes through ``volume_from_node`` (the Slicer bridge), paths through :func:`medai.io.read_image`."""
    from ..io import read_image

    return [read_image(i) if isinstance(i, (str, os.PathLike)) else volume_from_node(i) for i in cohort_case(case)]
