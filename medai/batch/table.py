"""``results.csv`` and atomic outputs: only the driving process writes into the output folder."""

from __future__ import annotations

import csv
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

RESULTS = "results.csv"
PARTIAL = ".medai-partial"  # temporary outputs, renamed into place when complete
HEAD = ["case", "status", "output", "time_s"]
TAIL = ["model", "warnings", "error"]


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
def defer_sigint():
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


def remove_partial(outdir: Path) -> None:
    partial = outdir / PARTIAL
    if partial.is_dir():
        for p in partial.iterdir():
            p.unlink(missing_ok=True)
        partial.rmdir()


