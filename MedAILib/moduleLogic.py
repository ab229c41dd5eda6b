"""The logic that the MedAISegment and MedAIClassify modules share: a job runner and its main-thread pump.

Each module's logic subclasses :class:`MedAIModuleLogic`, names its runner in ``_createRunner`` and
starts runs through ``_runJob``. Only slicer is imported at load time: :mod:`medai.slicer.jobs` (PyTorch,
MONAI) and :mod:`MedAILib.widgets` are imported when the runners are first used, after the dependency check.
"""

from __future__ import annotations

from typing import Callable

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic


class MedAIModuleLogic(ScriptedLoadableModuleLogic):
    """A :mod:`medai.slicer.jobs` runner, the queue it posts main-thread work to, and the timer that drains it."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        # the runners, queues and pumps import medai.slicer.jobs (PyTorch, MONAI): they are made on first use,
        # so that creating the logic (the panel's setup) works before the dependency check has installed them
        self._runners: dict | None = None

    def _ensureRunners(self) -> dict:
        if self._runners is None:
            from MedAILib.dependencies import ensure_dependencies

            if not ensure_dependencies():
                raise RuntimeError("MedAI needs PyTorch and MONAI; install them when asked, then try again")
            from medai.slicer.jobs import MainThreadQueue, TrainRunner
            from MedAILib.widgets import QueuePump

            queue = MainThreadQueue()
            # training has its own queue and pump: a model can run while one trains, and each pump stops with its job
            trainQueue = MainThreadQueue()
            self._runners = {"queue": queue, "runner": self._createRunner(queue), "pump": QueuePump(queue),
                             "trainQueue": trainQueue, "trainRunner": TrainRunner(trainQueue),
                             "trainPump": QueuePump(trainQueue)}
        return self._runners

    queue = property(lambda self: self._ensureRunners()["queue"])
    runner = property(lambda self: self._ensureRunners()["runner"])
    pump = property(lambda self: self._ensureRunners()["pump"])
    trainQueue = property(lambda self: self._ensureRunners()["trainQueue"])
    trainRunner = property(lambda self: self._ensureRunners()["trainRunner"])
    trainPump = property(lambda self: self._ensureRunners()["trainPump"])

    def _createRunner(self, queue):
        """The module's :class:`medai.slicer.jobs.JobRunner` subclass, scheduling on ``queue``."""
        raise NotImplementedError

    def cancel(self) -> None:
        if self._runners is not None and self.runner.job is not None:
            self.runner.job.cancel()

    def cancelTraining(self) -> None:
        """Stop the training at its next step; the best checkpoint so far stays in the output folder."""
        if self._runners is not None and self.trainRunner.job is not None:
            self.trainRunner.job.cancel()

    def stopJobs(self) -> None:
        """Cancel a running model job and training, and stop both queue pumps (the module is torn down)."""
        if self._runners is None:
            return
        for runner in (self.runner, self.trainRunner):
            if runner.job is not None and not runner.job.done:
                runner.job.cancel()
        self.pump.stop()
        self.trainPump.stop()

    def train(self, source, outputFolder: str, network: str = "unet", epochs: int = 50, finetuneFrom: str | None = None,
              device: str = "auto", name: str | None = None, waitForCompletion: bool = True,
              progressCallback: Callable | None = None, completedCallback: Callable | None = None,
              eventCallback: Callable | None = None, register: Callable | None = None, **config):
        """Train a model on ``source``: ``[(volumeNode, segmentationNode), ...]`` (segmentation) or a table
        node with ``volume`` and ``class`` columns (classification), into ``outputFolder``.

        Returns the :class:`medai.slicer.jobs.TrainOutput` (model folder, chart and table nodes), or with
        ``waitForCompletion=False`` the running job at once (``job.cancel()`` keeps the best checkpoint).
        The finished model is added to the model lists (``register``, default
        :func:`MedAILib.widgets.registerModel`). More :class:`medai.training.TrainConfig` fields go in ``config``.
        """
        from pathlib import Path

        from medai.training import TrainConfig
        from MedAILib.widgets import registerModel, runJob

        task = "classification" if hasattr(source, "IsA") else "segmentation"
        trainConfig = TrainConfig(task=task, network=network, epochs=int(epochs), finetune_from=finetuneFrom or None,
                                  device=device, name=name or Path(outputFolder).name, **config)
        return runJob(self.trainPump, lambda wait, completed: self.trainRunner.train(
            source, outputFolder, trainConfig, wait, progressCallback, completed, eventCallback,
            register or registerModel, poll=slicer.app.processEvents), waitForCompletion, completedCallback,
            self.trainRunner)

    def trainRecipe(self, name: str, device: str = "auto", waitForCompletion: bool = True,
                    progressCallback: Callable | None = None, completedCallback: Callable | None = None,
                    register: Callable | None = None, replace: bool = False, **overrides):
        """Train the catalog recipe ``name`` (e.g. "pneumonia": data fetched and MD5-checked on the worker) into
        MedAI's cache, where the catalog's model of that name finds it; like :meth:`train` otherwise."""
        from medai.training import recipes
        from MedAILib.widgets import registerModel, runJob

        recipe = recipes.get(name)
        folder = recipes.output_folder(recipe)
        if (folder / "medai.json").exists() and not replace:
            raise ValueError(f"{folder} already holds the trained '{name}' model; retrain with replace=True")
        config = recipes.config(recipe, {"device": device, **overrides})
        return runJob(self.trainPump, lambda wait, completed: self.trainRunner.train(
            recipes.RecipeSource(name), folder, config, wait, progressCallback, completed, None,
            register or registerModel, poll=slicer.app.processEvents), waitForCompletion, completedCallback,
            self.trainRunner)

    def _runJob(self, start: Callable, waitForCompletion: bool, completedCallback: Callable | None):
        """``start(wait, completed)`` calls the runner; see :func:`MedAILib.widgets.runJob`."""
        from MedAILib.widgets import runJob

        return runJob(self.pump, start, waitForCompletion, completedCallback, self.runner)
