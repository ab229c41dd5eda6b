"""Slicer's own pure-Python sources (``../shared/fixtures/slicer-python``) over the real slicer-core MRML.

:func:`slicer_python` loads Slicer v5.12.3's ``parameterNodeWrapper``, ``util``, ``ScriptedLoadableModule``
and (optionally) ``packaging`` as ``slicer.<name>``, with a fresh headless scene, and puts everything
back afterwards (``sys.modules`` and the ``slicer`` package's attributes), so other tests in the same
process see the plain slicer-core package again.

Qt and CTK are not available (PythonQt): ``qt`` and ``ctk`` are stand-in modules whose every attribute
is an empty class (its enum values are strings), enough for the class statements and annotations these files run at import time
(Slicer's ``slicer.q*`` widget classes likewise). Nothing here uses
them to decide anything: code that needs a real widget is not run. ``slicer.i18n.tr`` returns its text.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLICER_PYTHON = REPO.parent / "shared" / "fixtures" / "slicer-python" / "slicer_v5_12_3"
MODULE_FOLDERS = ("MedAILib", "MedAISegment", "MedAIClassify")
OWNED = {"qt", "ctk", "slicer", "PyTorchUtils", *MODULE_FOLDERS}  # top-level names whose modules are put back


def require_slicer_python() -> Path:
    if not (SLICER_PYTHON / "parameterNodeWrapper" / "wrapper.py").is_file():
        pytest.skip(f"Slicer's Python sources not found at {SLICER_PYTHON} (../shared is absent in this checkout)")
    return SLICER_PYTHON


class _EmptyClass(type):
    """Class attributes that are not defined (enum values such as ``qt.Qt.WaitCursor``) are their own names."""

    def __getattr__(cls, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return f"{cls.__name__}.{attr}"


def _stand_in(name: str) -> types.ModuleType:
    """A module whose every attribute is an empty class (cached, so ``qt.QWidget is qt.QWidget``)."""
    module = types.ModuleType(name)
    module.__doc__ = f"minimal stand-in for {name}: empty classes only"

    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        cls = _EmptyClass(attr, (), {"__module__": name})
        setattr(module, attr, cls)
        return cls

    module.__getattr__ = __getattr__
    return module


def _load(name: str, path: Path, package: bool = False) -> types.ModuleType:
    location = path / "__init__.py" if package else path
    spec = importlib.util.spec_from_file_location(
        name, location, submodule_search_locations=[str(path)] if package else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class TestingApp:
    """``slicer.app`` headless: the real application logic (:class:`medai.slicer.headless.HeadlessApp`), plus
    ``testingEnabled()`` (``qSlicerCoreApplication::testingEnabled``) and an override-cursor count."""

    def __init__(self, headless, testing: bool = False) -> None:
        self._headless, self.testing, self.cursor = headless, testing, 0
        self.commandOptions = headless.commandOptions

    def applicationLogic(self):
        return self._headless.applicationLogic()

    def processEvents(self) -> None:
        pass

    def testingEnabled(self) -> bool:
        return self.testing

    def setOverrideCursor(self, cursor) -> None:
        self.cursor += 1

    def restoreOverrideCursor(self) -> None:
        self.cursor -= 1


@contextlib.contextmanager
def slicer_python(packaging: bool = True, testing: bool = False):
    """Yield the ``slicer`` package with Slicer's own Python loaded over a fresh headless MRML scene.

    ``packaging=False`` is a Slicer before 5.12 (no ``slicer.packaging``). Messages that
    ``slicer.util.errorDisplay`` would show are collected in ``slicer.shownErrors``.
    """
    root = require_slicer_python()
    import slicer

    from medai.slicer.headless import make_headless_slicer

    saved_modules = dict(sys.modules)
    saved_attrs = dict(vars(slicer))
    saved_path = list(sys.path)
    try:
        for name in [n for n in sys.modules if n.split(".")[0] in MODULE_FOLDERS]:
            del sys.modules[name]  # imported afresh over Slicer's Python; the originals come back afterwards
        for name in ("qt", "ctk"):
            sys.modules[name] = _stand_in(name)
        i18n = types.ModuleType("slicer.i18n")
        i18n.tr = lambda text, *a, **k: text
        sys.modules["slicer.i18n"] = slicer.i18n = i18n
        slicer.util = _load("slicer.util", root / "util.py")
        shown: list[str] = []
        slicer.util.errorDisplay = lambda text, *a, **k: shown.append(str(text))
        slicer.shownErrors = shown
        for widget in sorted(set(re.findall(r"slicer\.(q[A-Z]\w+)", "".join(
                f.read_text() for f in (root / "parameterNodeWrapper").glob("*.py"))))):
            setattr(slicer, widget, getattr(sys.modules["qt"], widget))  # Slicer's Qt widgets: empty classes too
        slicer.parameterNodeWrapper = _load("slicer.parameterNodeWrapper", root / "parameterNodeWrapper", package=True)
        slicer.ScriptedLoadableModule = _load("slicer.ScriptedLoadableModule", root / "ScriptedLoadableModule.py")
        if packaging:  # in sys.modules only: slicer/__init__ does not import it, so no slicer.packaging attribute yet
            _load("slicer.packaging", root / "packaging.py")
        else:
            sys.modules["slicer.packaging"] = None  # "import slicer.packaging" raises ImportError, as in Slicer 5.10
            slicer.__dict__.pop("packaging", None)
        make_headless_slicer()
        slicer.app = TestingApp(slicer.app, testing)
        for folder in MODULE_FOLDERS:
            sys.path.insert(0, str(REPO / folder) if folder != "MedAILib" else str(REPO))
        yield slicer
    finally:
        for name in list(sys.modules):  # what this harness put there (numpy, torch... loaded meanwhile stay)
            if name.split(".")[0] in OWNED and (name not in saved_modules or sys.modules[name] is not saved_modules[name]):
                del sys.modules[name]
        sys.modules.update(saved_modules)
        for name in list(vars(slicer)):
            if name not in saved_attrs:
                delattr(slicer, name)
        for name, value in saved_attrs.items():
            setattr(slicer, name, value)
        sys.path[:] = saved_path
