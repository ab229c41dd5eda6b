"""Shared command-line safety: ``--trust``, and output paths checked before any work."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def add_trust_argument(parser) -> None:
    parser.add_argument("--trust", action="store_true",
                        help="run a model that would run code (a MONAI Bundle or a card with expressions that is not in the catalog); "
                             "only for models whose source you trust")


def _writable_folder(path: Path) -> None:
    """The folder that will hold ``path`` (or its nearest existing parent) must accept a new file."""
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"output {path}: {folder} is a file, not a folder; choose another output path")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".medai-write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"output {path}: cannot write into {folder} ({exc.strerror or exc}); choose a writable folder") from exc


def check_outputs(outputs: list[str | Path | None], inputs: list[str | Path | None]) -> None:
    """Before running: no output may be an input (or the same file), and every output folder must be writable."""
    given_in = [Path(p).expanduser() for p in inputs if p]
    seen: set[Path] = set()
    for out in (Path(p).expanduser() for p in outputs if p):
        resolved = out.resolve()
        for inp in given_in:
            if resolved == inp.resolve() or (out.exists() and inp.exists() and os.path.samefile(out, inp)):
                raise ValueError(f"output {out} is also an input; MedAI never overwrites an input, choose another output path")
            if inp.is_dir() and inp.resolve() in resolved.parents:
                raise ValueError(f"output {out} lies inside the input folder {inp}; choose another output path")
        if resolved in seen:
            raise ValueError(f"output {out} is given twice; give each output its own path")
        seen.add(resolved)
        _writable_folder(resolved)


def print_warnings(warnings: list[str]) -> None:
    """Doubts about the input or the result, one per line on stderr."""
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
