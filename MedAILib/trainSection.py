"""The "Train" section that MedAISegment and MedAIClassify share, loaded from ``Resources/UI/MedAITrainSection.ui``.

One implementation for both panels: the module's task picks the inputs (segmentation: the scene's
volumes that have a segmentation drawn on them, with checkboxes; classification: a table node with
``volume`` and ``class`` columns) and the networks. Training runs off the GUI thread through
:meth:`MedAILib.moduleLogic.MedAIModuleLogic.train` (:class:`medai.slicer.jobs.TrainRunner`); the
Train button becomes Cancel, which keeps the best checkpoint. On success the training curves are
shown in a plot view and the new model is selected in the module's model selector.

Everything beneath these widgets (reading cases, the run, progress text, chart, table,
registration) is tested headless in ``Testing/Python/test_module_train_jobs.py``.
"""

from __future__ import annotations

import os

import qt
import slicer

UI_PATH = os.path.join(os.path.dirname(__file__), "Resources", "UI", "MedAITrainSection.ui")
NO_BASE_MODEL = "(none: train from scratch)"


class TrainSection:
    """The Train section of ``moduleWidget`` (a :class:`MedAILib.moduleWidget.MedAIModuleWidget`) for ``task``."""

    def __init__(self, moduleWidget, task: str) -> None:
        from medai.slicer import panel

        self.moduleWidget, self.task = moduleWidget, task
        self.widget = slicer.util.loadUI(UI_PATH)
        self.ui = slicer.util.childWidgetVariables(self.widget)
        self.widget.setMRMLScene(slicer.mrmlScene)
        self.pairs: list[tuple[str, str]] = []  # (volume ID, segmentation ID) per list row
        from MedAILib.widgets import RunControls

        self.run = RunControls(self.ui.trainButton, self.ui.trainProgressBar, self.ui.trainStatusLabel, self.ui.trainElapsedLabel,
                               applyText="Train", cancelTip="Stop training; the best checkpoint so far is kept",
                               applyTip="Train a model on the checked cases; Cancel keeps the best checkpoint")

        segmentation = task == "segmentation"
        for w in (self.ui.casesLabel, self.ui.casesListWidget, self.ui.refreshCasesButton):
            w.visible = segmentation
        self.ui.tableLabel.visible = self.ui.tableSelector.visible = not segmentation
        for network in panel.train_networks(task):
            self.ui.networkComboBox.addItem(network)

        self.recipeButtons = []  # one per catalog recipe of this task, e.g. "Pneumonia on chest X-rays (train it yourself)"
        for recipe in panel.train_recipes(task):
            button = qt.QPushButton(f"Train the {recipe['name']} recipe")
            button.toolTip = f"{recipe.get('title', '')}: {recipe.get('description', '')}"
            button.connect("clicked(bool)", lambda checked=False, name=recipe["name"]: self.onRecipeButton(name))
            self.ui.trainButton.parentWidget().layout().addWidget(button)
            self.recipeButtons.append(button)
        self.ui.trainCollapsibleButton.connect("contentsCollapsed(bool)", self.onCollapsed)
        self.ui.refreshCasesButton.connect("clicked(bool)", self.refreshCases)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)

    # -- inputs --------------------------------------------------------------------------------------
    def onCollapsed(self, collapsed: bool) -> None:
        if not collapsed:
            self.refreshCases()
            self.refreshBaseModels()

    def refreshCases(self) -> None:
        """List the scene's volume/segmentation pairs, keeping the check marks of those listed before."""
        from medai.slicer.training_bridge import segmentation_pairs_in_scene

        checked = {pair for n, pair in enumerate(self.pairs)
                   if self.ui.casesListWidget.item(n) and self.ui.casesListWidget.item(n).checkState() == qt.Qt.Checked}
        self.ui.casesListWidget.clear()
        self.pairs = []
        for volume, seg in segmentation_pairs_in_scene(slicer.mrmlScene):
            pair = (volume.GetID(), seg.GetID())
            item = qt.QListWidgetItem(f"{volume.GetName()}  \u2190  {seg.GetName()}")
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked if (pair in checked or not checked) else qt.Qt.Unchecked)
            self.ui.casesListWidget.addItem(item)
            self.pairs.append(pair)

    def refreshBaseModels(self) -> None:
        """The models of this task that training can start from (those of the module's model selector)."""
        combo = self.ui.finetuneComboBox
        current = combo.currentData
        combo.clear()
        combo.addItem(NO_BASE_MODEL, "")
        for choice in self.moduleWidget.models.choices:
            combo.addItem(choice.title, choice.spec)
        index = combo.findData(current) if current else 0
        combo.currentIndex = max(index, 0)

    def source(self):
        """The checked ``(volume, segmentation)`` pairs, or the selected table node."""
        if self.task != "segmentation":
            return self.ui.tableSelector.currentNode()
        nodes = []
        for n, (volumeID, segID) in enumerate(self.pairs):
            if self.ui.casesListWidget.item(n).checkState() == qt.Qt.Checked:
                nodes.append((slicer.mrmlScene.GetNodeByID(volumeID), slicer.mrmlScene.GetNodeByID(segID)))
        return nodes

    # -- run -----------------------------------------------------------------------------------------
    def onTrainButton(self) -> None:
        """Train starts a run; while it runs the same button cancels it (the best checkpoint is kept)."""
        from medai.slicer import panel
        from MedAILib.dependencies import ensure_dependencies

        logic = self.moduleWidget.logic
        if self.run.running:
            logic.cancelTraining()
            self.run.statusLabel.text = "Cancelling (the best checkpoint so far is kept)..."
            return
        if not ensure_dependencies():
            return
        name = self.ui.modelNameLineEdit.text.strip() or f"my-{self.ui.networkComboBox.currentText}"
        folder = self.ui.outputFolderPathLineEdit.currentPath or str(panel.default_train_folder(name))
        self._setRunning(True, f"Training {name} into {folder}...")
        try:
            logic.train(self.source(), folder, self.ui.networkComboBox.currentText, self.ui.epochsSpinBox.value,
                        self.ui.finetuneComboBox.currentData or None, self.moduleWidget.devices.currentDevice(), name,
                        waitForCompletion=False, progressCallback=self.onProgress, completedCallback=self.onCompleted,
                        register=self.moduleWidget.models.addModel)  # registers, lists and selects the model once
        except Exception as exc:
            self._setRunning(False, "Not started")
            slicer.util.errorDisplay(str(exc))

    def onRecipeButton(self, name: str) -> None:
        """Train a catalog recipe (its own data and settings) with the same progress, Cancel and registration."""
        from MedAILib.dependencies import ensure_dependencies

        if self.run.running or not ensure_dependencies():
            return
        from medai.models.catalog import model_dir

        replace = (model_dir(name) / "medai.json").exists()
        if replace and not slicer.util.confirmOkCancelDisplay(f"The '{name}' model is already trained. Train it again?"):
            return
        self._setRunning(True, f"Training the {name} recipe (downloading its data first if needed)...")
        try:
            self.moduleWidget.logic.trainRecipe(name, self.moduleWidget.devices.currentDevice(), waitForCompletion=False,
                                                progressCallback=self.onProgress, completedCallback=self.onCompleted,
                                                register=self.moduleWidget.models.addModel, replace=replace)
        except Exception as exc:
            self._setRunning(False, "Not started")
            slicer.util.errorDisplay(str(exc))

    def onProgress(self, fraction: float, text: str) -> None:
        self.run.progress(fraction, "training", status=text[:1].upper() + text[1:])

    def onCompleted(self, job) -> None:
        status = "Training ended, but showing its results failed; see the Python console."
        try:
            if job.state == "succeeded":
                out = job.output
                # the job's apply registered the model through models.addModel (listed and selected at once)
                spec = self.moduleWidget.models.currentSpec()
                self.refreshBaseModels()
                slicer.modules.plots.logic().ShowChartInLayout(out.chart)
                best = out.result.best_metric
                metric = f", best {out.result.metric_name} {best:.3f} (epoch {out.result.best_epoch})" if best is not None else ""
                status = f"Done ({out.result.stopped}{metric}). The model is selected above: {spec}"
            elif job.state == "cancelled":
                kept = job.train_result.card_path if job.train_result is not None else None
                if kept is not None:
                    from MedAILib.widgets import registerModel

                    registerModel(str(kept.parent))
                    self.moduleWidget.models.refresh()
                status = (f"Cancelled. The best checkpoint (epoch {job.train_result.best_epoch}) is kept in "
                          f"{kept.parent} and listed among the models." if kept is not None else
                          "Cancelled before the first epoch ended; no model was kept.")
            else:
                self._setRunning(False, "Training failed; the scene was left as it was.")
                slicer.util.errorDisplay(f"Training failed: {job.error}")
        finally:  # the Train button must come back even when showing the results fails
            if self.run.running:
                self._setRunning(False, status)

    def _setRunning(self, running: bool, status: str) -> None:
        """The run's controls (Train/Cancel, progress, status, elapsed time) and the inputs, locked while it runs."""
        for w in (self.ui.casesListWidget, self.ui.tableSelector, self.ui.networkComboBox, self.ui.epochsSpinBox,
                  self.ui.modelNameLineEdit, self.ui.outputFolderPathLineEdit, self.ui.finetuneComboBox, *self.recipeButtons):
            w.enabled = not running
        if running:
            self.run.start(status)
        else:
            self.run.finish(status)

    def cleanup(self) -> None:
        """Stop a running training when the module is torn down (the best checkpoint is kept)."""
        self.run.timer.stop()
        if self.run.running:
            self.moduleWidget.logic.cancelTraining()
