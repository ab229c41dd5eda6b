"""Shared panel pieces: model selector with "Import model...", device choice, run controls, queue pump.

The Train section is :mod:`MedAILib.trainSection`.

Thin wrappers that put what :mod:`medai.slicer.panel` computes into widgets loaded from ``.ui``
files; they hold no algorithm.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import qt
import slicer

from medai.slicer import panel

IMPORTED_KEY = "MedAI/ImportedModels"
MIRROR_KEY = "MedAI/ModelMirror"  # a base URL or folder every model download goes to (as $MEDAI_MODEL_MIRROR)


def applyModelMirrorSetting() -> str:
    """Make the ``MedAI/ModelMirror`` application setting the mirror of this session's downloads."""
    import os

    value = str(qt.QSettings().value(MIRROR_KEY) or "").strip()
    if value:
        os.environ["MEDAI_MODEL_MIRROR"] = value
    return value


class QueuePump:
    """Drains a :class:`medai.slicer.jobs.MainThreadQueue` from a timer owned by the main thread."""

    def __init__(self, queue, interval_ms: int = 50) -> None:
        self.queue = queue
        self.timer = qt.QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.connect("timeout()", lambda: self.queue.process_pending())

    def start(self) -> None:
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()


def runJob(pump: QueuePump, start: Callable, waitForCompletion: bool, completedCallback: Callable | None = None,
           runner=None):
    """Start a :mod:`medai.slicer.jobs` run the way both module logics do.

    ``start(wait, completed)`` calls ``runner`` (the :class:`medai.slicer.jobs.JobRunner` that ``pump``
    serves). Waiting: the runner drains the queue itself (``poll=slicer.app.processEvents`` keeps the
    GUI alive). Not waiting: ``pump`` drains the queue from a main-thread timer until the job
    completes, then stops. A start that fails leaves the pump running while the runner still has a
    job running (a second start refused with "already running" must not stall the first job).
    """
    if waitForCompletion:
        return start(True, completedCallback)

    def completed(job) -> None:
        pump.stop()
        if completedCallback is not None:
            completedCallback(job)

    pump.start()
    try:
        return start(False, completed)
    except Exception:
        if runner is None or runner.job is None or runner.job.done:
            pump.stop()
        raise


class ModelSelector:
    """A combo box of catalog models (grouped by modality and task, filtered by a search box) plus imported
    ones, and an "Import model..." tool button that also downloads the selected model and sets the mirror."""

    def __init__(self, comboBox, importButton, task: str = "segmentation",
                 onChanged: Callable[[str], None] | None = None, searchBox=None) -> None:
        self.comboBox, self.importButton, self.task, self.onChanged = comboBox, importButton, task, onChanged
        self.searchBox = searchBox
        self.choices: list[panel.ModelChoice] = []  # the listed models, in list order
        self.rows: list[panel.ModelChoice | None] = []  # one per combo row; None: a group header
        applyModelMirrorSetting()
        menu = qt.QMenu(importButton)
        menu.addAction("MONAI Bundle folder...", self.importFolder)
        menu.addAction("Bundle .zip, model card .json or TorchScript file...", self.importFile)
        menu.addSeparator()
        menu.addAction("Download the selected model now...", self.downloadSelected)
        menu.addAction("Model mirror (offline / proxy)...", self.setMirror)
        importButton.setMenu(menu)
        importButton.popupMode = qt.QToolButton.InstantPopup
        comboBox.connect("currentIndexChanged(int)", self._changed)
        if searchBox is not None:
            searchBox.connect("textChanged(QString)", lambda _text: self.refresh())
        self.refresh()

    @staticmethod
    def imported() -> list[str]:
        value = qt.QSettings().value(IMPORTED_KEY) or []
        return [value] if isinstance(value, str) else list(value)

    def refresh(self, select: str | None = None) -> None:
        current = select or self.currentSpec()
        search = self.searchBox.text if self.searchBox is not None else ""
        blocked = self.comboBox.blockSignals(True)
        self.comboBox.clear()
        self.rows = []
        for group in panel.model_groups(self.task, search, self.imported()):
            self.comboBox.addItem(f"— {group.title} —", "")
            self.comboBox.model().item(len(self.rows)).setEnabled(False)  # a header, not selectable
            self.rows.append(None)
            for choice in group.choices:
                self.comboBox.addItem("    " + choice.title, choice.spec)
                self.comboBox.setItemData(len(self.rows), choice.tooltip, qt.Qt.ToolTipRole)
                self.rows.append(choice)
        self.choices = [c for c in self.rows if c is not None]
        self.comboBox.blockSignals(blocked)
        self.setCurrentSpec(current)

    def currentChoice(self) -> panel.ModelChoice | None:
        index = self.comboBox.currentIndex
        return self.rows[index] if 0 <= index < len(self.rows) else None

    def currentSpec(self) -> str:
        choice = self.currentChoice()
        return choice.spec if choice else ""

    def setCurrentSpec(self, spec: str | None) -> None:
        index = next((n for n, c in enumerate(self.rows) if c is not None and c.spec == spec),
                     next((n for n, c in enumerate(self.rows) if c is not None), -1))
        self.comboBox.currentIndex = index
        self._changed(index)

    def downloadSelected(self) -> None:
        """Download the selected catalog model with a progress dialog whose Cancel stops it (resumable later)."""
        spec = self.currentSpec()
        try:
            # tryWithErrorDisplay shows the error, then re-raises it: the slot ends here
            with slicer.util.tryWithErrorDisplay("Cannot download this model."):
                job = panel.ModelDownload(spec)
                dialog = qt.QProgressDialog(job.text, "Cancel", 0, 100, slicer.util.mainWindow())
                dialog.setWindowModality(qt.Qt.WindowModal)
                dialog.connect("canceled()", job.cancel)
                try:
                    while not job.done:
                        dialog.setValue(int(job.fraction * 100))
                        dialog.setLabelText(job.text)
                        slicer.app.processEvents()
                        job.wait(0.1)
                finally:
                    dialog.close()
                if job.error:
                    raise RuntimeError(job.error)
                self.refresh(select=spec)
        except Exception:
            pass

    def setMirror(self) -> None:
        current = str(qt.QSettings().value(MIRROR_KEY) or "")
        text = qt.QInputDialog.getText(None, "Model mirror", "Base URL or folder holding the model files "
                                       "(<name>_v<version>.zip for zoo bundles); empty: the public sources", qt.QLineEdit.Normal, current)
        if text is None:
            return
        qt.QSettings().setValue(MIRROR_KEY, text.strip())
        import os

        os.environ.pop("MEDAI_MODEL_MIRROR", None) if not text.strip() else applyModelMirrorSetting()
        self.refresh()

    def _changed(self, index: int) -> None:
        if self.onChanged is not None:
            self.onChanged(self.currentSpec())

    def importFolder(self) -> None:
        self._import(qt.QFileDialog.getExistingDirectory(None, "Import a MONAI Bundle or model card folder"))

    def importFile(self) -> None:
        self._import(qt.QFileDialog.getOpenFileName(None, "Import a model", "", panel.IMPORT_FILTER))

    def _import(self, path: str) -> None:
        if not path:
            return
        try:
            # tryWithErrorDisplay shows the error, then re-raises it: a menu slot has nothing more to do
            with slicer.util.tryWithErrorDisplay("Cannot import this model."):
                self.addModel(path)
        except Exception:
            logging.exception("MedAI: cannot import the model %s", path)

    def addModel(self, path: str) -> str:
        """Add an imported or trained model to the user's list (shared by both panels) and select it."""
        spec = registerModel(path)
        self.refresh(select=spec)
        return spec


def registerModel(path: str) -> str:
    """Keep ``path`` in the application settings' list of user models (:func:`medai.slicer.panel.add_model`).

    Every ModelSelector lists it from its next refresh; returns the spec it is listed under.
    """
    imported = panel.add_model(ModelSelector.imported(), path)
    qt.QSettings().setValue(IMPORTED_KEY, imported)
    return imported[-1]


class DeviceSelector:
    """A combo box of auto / CPU / each CUDA GPU."""

    def __init__(self, comboBox) -> None:
        self.comboBox = comboBox
        self.devices: list[str] = []
        comboBox.clear()
        for label, device in panel.device_choices():
            comboBox.addItem(label, device)
            self.devices.append(device)

    def currentDevice(self) -> str:
        index = self.comboBox.currentIndex
        return self.devices[index] if 0 <= index < len(self.devices) else "auto"

    def setCurrentDevice(self, device: str) -> None:
        self.comboBox.currentIndex = self.devices.index(device) if device in self.devices else 0


class RunControls:
    """Apply button that becomes Cancel while running, progress bar, status and elapsed time.

    ``applyTip``: the button's tooltip when a run ends (None: the module sets it, e.g. from its inputs).
    """

    def __init__(self, applyButton, progressBar, statusLabel, elapsedLabel, applyText: str = "Apply",
                 cancelTip: str = "Stop the run; the scene is left as it was", applyTip: str | None = None) -> None:
        self.applyButton, self.progressBar = applyButton, progressBar
        self.statusLabel, self.elapsedLabel, self.applyText = statusLabel, elapsedLabel, applyText
        self.cancelTip, self.applyTip = cancelTip, applyTip
        self.running = False
        self._start = 0.0
        self.timer = qt.QTimer()
        self.timer.setInterval(500)
        self.timer.connect("timeout()", self._tick)
        progressBar.setRange(0, 1000)
        progressBar.hide()

    def start(self, status: str = "Starting...") -> None:
        self.running, self._start = True, time.perf_counter()
        self.applyButton.text = "Cancel"
        self.applyButton.toolTip = self.cancelTip
        self.progressBar.value = 0
        self.progressBar.show()
        self.statusLabel.text = status
        self._tick()
        self.timer.start()

    def progress(self, fraction: float, stage: str, status: str | None = None) -> None:
        """``fraction`` done, in ``stage`` (shown as "Stage..."), or with a ``status`` text shown as it is."""
        self.progressBar.value = int(1000 * fraction)
        if status is not None:
            self.statusLabel.text = status
        else:
            self.statusLabel.text = stage.capitalize() + "..." if stage and stage != "done" else "Finishing..."

    def finish(self, message: str) -> None:
        self.running = False
        self.timer.stop()
        self._tick()
        self.applyButton.text = self.applyText
        if self.applyTip is not None:
            self.applyButton.toolTip = self.applyTip
        self.progressBar.hide()
        self.statusLabel.text = message

    def _tick(self) -> None:
        self.elapsedLabel.text = panel.format_elapsed(time.perf_counter() - self._start) if self._start else ""
