"""A fast start for the ``medai`` command line (one process per command): lean MONAI import, less garbage collection.

``import monai`` imports every MONAI sub-module, and their module-level ``optional_import`` calls
import each optional package that happens to be installed: pytorch-ignite (which brings
``torch.distributed`` and sympy), scipy.signal (with scipy.stats), pandas, matplotlib,
scikit-learn, requests, jsonschema, and pydicom through nibabel. None of them is used to run a
model; together they took about 2.5 s of CPU time of a cold ``medai segment`` (docs/performance.md,
Cold start). While MONAI's package is being imported, and only in the thread importing it, they are
hidden (:class:`LeanMonaiFinder`), so MONAI takes them as absent, exactly as when they are not
installed; any other import of them (before, after, in another thread) works as usual.

What MONAI builds on them (ignite engines and handlers, CSV datasets, plots, sklearn metrics,
``UltrasoundConfidenceMapTransform``, signal filters, ``PydicomReader``, its own downloads and
metadata validation) then fails in that process; :func:`medai.cli.main` runs the command once more
with MONAI imported fully (:func:`needs_full_imports`, :func:`rerun_full`). ``MEDAI_FULL_IMPORTS=1``
turns the lean import off. Only the command line does this, never ``medai`` used as a library
(Slicer, tests calling ``main([...])``).

Garbage collection: the imports allocate a few million long-lived objects (torch, MONAI), over
which Python's full collections ran several times (about 0.5 s) and once more at exit (1-2 s). In
the command-line process, collection pauses while a command imports and loads its model
(:func:`loading`), what exists then is frozen out of later collections, and everything is frozen
before exit (:func:`before_exit`).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.abc
import os
import sys
import threading

HIDDEN = ("ignite", "pandas", "matplotlib", "sklearn", "scipy.signal", "pydicom", "requests", "jsonschema")
FULL_IMPORTS_ENV = "MEDAI_FULL_IMPORTS"
SKIPPED = "is skipped while MONAI is imported (medai's fast start)"  # MONAI keeps this text in its OptionalImportError


class LeanMonaiFinder(importlib.abc.MetaPathFinder):
    """Fails the import of :data:`HIDDEN` packages made while MONAI's package imports, in the thread importing it."""

    def __init__(self) -> None:
        self.thread: int | None = None  # the thread that started importing MONAI
        self.hid: list[str] = []  # what was hidden from MONAI

    def find_spec(self, name, path=None, target=None):
        if name == "monai" and self.thread is None:
            self.thread = threading.get_ident()
        elif self.thread == threading.get_ident() and _monai_initialising() and any(name == h or name.startswith(h + ".") for h in HIDDEN):
            self.hid.append(name)
            raise ModuleNotFoundError(f"{name} {SKIPPED}", name=name)
        return None  # the usual finders look it up


def _monai_initialising() -> bool:
    spec = getattr(sys.modules.get("monai"), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


_finder: LeanMonaiFinder | None = None
_state = {"cli": False}


def install() -> bool:
    """From the command-line entry point (a process of its own), before the command imports anything; returns
    whether MONAI will be imported lean."""
    global _finder
    _state["cli"] = True
    if os.environ.get(FULL_IMPORTS_ENV, "").strip() or "monai" in sys.modules:
        return False
    if _finder is None:
        _finder = LeanMonaiFinder()
        sys.meta_path.insert(0, _finder)
    return True


@contextlib.contextmanager
def loading():
    """Around a command's imports and model loading: in the command-line process, no garbage collection meanwhile,
    then what was loaded is frozen out of later collections (it lives until the process ends)."""
    if not _state["cli"] or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def before_exit() -> None:
    """The process ends next: spare it Python's final collection over every object (atexit handlers, stream
    flushing and module teardown still run)."""
    if _state["cli"]:
        gc.freeze()


def hidden() -> list[str]:
    """The packages hidden from MONAI in this process (empty when MONAI was imported fully)."""
    return list(_finder.hid) if _finder is not None else []


def needs_full_imports(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it came from, stems from a package hidden from MONAI in this process."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if SKIPPED in str(exc):
            return bool(hidden())
        exc = exc.__cause__ or exc.__context__
    return False


def rerun_full() -> int:
    """Run this same command line again in a process that imports MONAI fully; its exit code."""
    import subprocess

    print(f"medai: a MONAI feature needs a package skipped for a fast start ({', '.join(sorted(set(hidden())))}); "
          f"running again with {FULL_IMPORTS_ENV}=1", file=sys.stderr)
    return subprocess.call([sys.executable, "-m", "medai.cli", *sys.argv[1:]], env={**os.environ, FULL_IMPORTS_ENV: "1"})
