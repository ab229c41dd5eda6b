"""The modules' own self-tests (``MedAISegmentTest``, ``MedAIClassifyTest``), run as Slicer runs them.

Slicer's ``ScriptedLoadableModuleTest`` (v5.12.3) over real MRML, tiny real MONAI networks. Without
Qt: ``delayDisplay`` (a Qt dialog) is replaced by a list of messages, and ``qt.QTimer`` by an inert
timer; the runs under test never need the timer to fire, because ``job.wait`` drains the main-thread
queue itself. Each test method must run between its own ``setUp`` and ``tearDown``.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest

from slicer_python import slicer_python


class InertTimer:
    """``qt.QTimer`` for a QueuePump that the waiting runs never need."""

    def __init__(self, *args) -> None:
        self.active = False

    def setInterval(self, ms: int) -> None:
        pass

    def connect(self, signal: str, slot) -> None:
        pass

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False


@pytest.mark.parametrize("moduleName", ["MedAISegment", "MedAIClassify"])
def test_self_tests_pair_every_set_up_with_a_tear_down(moduleName):
    with slicer_python(testing=True) as slicer:
        sys.modules["qt"].QTimer = InertTimer
        module = importlib.import_module(moduleName)
        base = getattr(module, f"{moduleName}Test")
        calls, folders = [], []

        class Counted(base):
            def setUp(self):
                calls.append("setUp")
                base.setUp(self)
                folders.append(self.tmp.name)

            def tearDown(self):
                calls.append("tearDown")
                base.tearDown(self)

        test = Counted()
        messages = []
        test.delayDisplay = lambda message, *a, **k: messages.append(message)
        test.runTest()
        assert calls and calls == ["setUp", "tearDown"] * (len(calls) // 2), calls
        assert len(folders) == len(calls) // 2 and not any(os.path.exists(f) for f in folders)
        assert messages.count("Test passed") == len(folders), messages
        assert len(folders) == (3 if moduleName == "MedAIClassify" else 2)
