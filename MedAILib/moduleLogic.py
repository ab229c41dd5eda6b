"""The logic that the MedAISegment and MedAIClassify modules share: a job runner and its main-thread pump.

Each module's logic subclasses :class:`MedAIModuleLogic`, names its runner in ``_createRunner`` and
starts runs through ``_runJob``. Only slicer is imported at load time: :mod:`medai` and
:mod:`MedAILib.widgets` are imported when a logic is created, after the dependency check.
"""

from __future__ import annotations

from typing import Callable

from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic


class MedAIModuleLogic(ScriptedLoadableModuleLogic):
    """A :mod:`medai.slicer.jobs` runner, the queue it posts main-thread work to, and the timer that drains it."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from medai.slicer.jobs import MainThreadQueue
        from MedAILib.widgets import QueuePump

        self.queue = MainThreadQueue()
        self.runner = self._createRunner(self.queue)
        self.pump = QueuePump(self.queue)

    def _createRunner(self, queue):
        """The module's :class:`medai.slicer.jobs.JobRunner` subclass, scheduling on ``queue``."""
        raise NotImplementedError

    def cancel(self) -> None:
        if self.runner.job is not None:
            self.runner.job.cancel()

    def _runJob(self, start: Callable, waitForCompletion: bool, completedCallback: Callable | None):
        """``start(wait, completed)`` calls the runner; see :func:`MedAILib.widgets.runJob`."""
        from MedAILib.widgets import runJob

        return runJob(self.pump, start, waitForCompletion, completedCallback)
