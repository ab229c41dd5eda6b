"""The widget lifecycle that the MedAISegment and MedAIClassify panels share.

:class:`MedAIModuleWidget` holds what both panels do the same way: the parameter node (connectGui,
its ModifiedEvent observer, restoring the model and device choices), enter/exit/cleanup and scene
close, the input selectors that follow the model's inputs, the device choice, and the
Apply/Cancel run with its completion. Each module subclasses it, loads its own ``.ui`` file and
fills in the hooks (``_createLogic``, ``_setupControls``, ``_onParameterNodeSet``,
``_onModelChanged``, ``_startJob``, ``_onJobSucceeded``) for its own controls. The "Train" section
(:class:`MedAILib.trainSection.TrainSection`, its own ``.ui``) is added here for the panel's
``MODEL_TASK``; no module code is needed for it.

Every ``self.ui.<name>`` used here must exist in both modules' ``.ui`` files
(Testing/Python/test_static_module.py checks it). Only slicer and vtk are imported at load time;
:mod:`MedAILib.widgets` and :mod:`medai.slicer.panel` are imported when the panel is built and do not
import PyTorch (so a fresh Slicer shows the panel and Apply/Train reach the dependency check);
:mod:`medai.slicer.jobs` (PyTorch, MONAI) is imported by the logic's runners on first use, after it.
"""

from __future__ import annotations

import logging

import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

MAX_INPUTS = 4


class MedAIModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Base of ``MedAISegmentWidget`` and ``MedAIClassifyWidget``.

    A base class rather than a mixin: ``ScriptedLoadableModuleWidget`` defines ``cleanup`` itself, so
    a mixin listed after it would silently lose its ``cleanup`` (and leak observers).
    """

    #: the ModelSelector task whose models the panel lists: "segmentation" or "classification"
    MODEL_TASK = ""
    #: the error shown when a model's inputs (or classes) cannot be read
    MODEL_ERROR = "Cannot read this model's inputs."
    #: the console call offered for a model with more than MAX_INPUTS inputs
    CONSOLE_CALL = ""
    #: "<JOB_NAME> failed: <error>"
    JOB_NAME = ""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        # input selectors in use, set by onModelChanged (not read from .visible: a selector inside the
        # collapsed Parameters section is not visible)
        self._inputCount = 1
        # False while the selected model's inputs cannot be read (the error was shown): Apply stays disabled
        self._modelReadable = True

    # -- hooks -------------------------------------------------------------------------------------
    def _createLogic(self):
        """The module's logic (its class is defined below the widget in the module file)."""
        raise NotImplementedError

    def _setupControls(self) -> None:
        """Fill and connect the module's own controls; the shared ones exist, the parameter node is not set yet."""

    def _onParameterNodeSet(self) -> None:
        """Show the new parameter node's values in the module's own controls (connectGui does the rest)."""

    def _onModelChanged(self, spec: str) -> None:
        """Update the module's own controls for model ``spec`` (errors are shown as MODEL_ERROR)."""

    def _startJob(self) -> None:
        """Start the module's logic without waiting; an exception means it did not start."""
        raise NotImplementedError

    def _onJobSucceeded(self, job) -> None:
        """Show a succeeded job's results; must call ``self.run.finish(...)``."""
        raise NotImplementedError

    # -- setup and lifecycle -----------------------------------------------------------------------
    def setupPanel(self, uiPath: str) -> None:
        """The module's ``setup``: load ``uiPath`` (the module's ``.ui``), create the shared controls, then its own."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(uiPath)
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self._createLogic()

        from MedAILib.widgets import DeviceSelector, ModelSelector, RunControls

        self.inputSelectors = [self.ui.inputVolume0Selector, self.ui.inputVolume1Selector,
                               self.ui.inputVolume2Selector, self.ui.inputVolume3Selector]
        self.inputLabels = [self.ui.inputVolume0Label, self.ui.inputVolume1Label,
                            self.ui.inputVolume2Label, self.ui.inputVolume3Label]
        self.run = RunControls(self.ui.applyButton, self.ui.progressBar, self.ui.statusLabel, self.ui.elapsedLabel)
        # ModelSelector reports its first model while it is being built, before self.models is assigned, and
        # onModelChanged -> _checkCanApply reads self.models and self.run: connect it once both exist, then call it
        self.models = ModelSelector(self.ui.modelComboBox, self.ui.importModelButton, self.MODEL_TASK,
                                    searchBox=self.ui.modelSearchBox)
        self.models.onChanged = self.onModelChanged
        self.onModelChanged(self.models.currentSpec())
        self.devices = DeviceSelector(self.ui.deviceComboBox)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self._setupControls()
        # the shared Train section (MedAILib/trainSection.py): last, but above a closing spacer of the module's .ui
        from MedAILib.trainSection import TrainSection

        self.trainSection = TrainSection(self, self.MODEL_TASK)
        layout = uiWidget.layout()
        last = layout.itemAt(layout.count() - 1) if layout.count() else None
        layout.insertWidget(layout.count() - 1 if last is not None and last.spacerItem() else layout.count(),
                            self.trainSection.widget)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if getattr(self, "trainSection", None) is not None:
            self.trainSection.cleanup()
        if self.logic is not None:  # cancel a running model job (and training) and stop both queue pumps
            self.logic.stopJobs()
        if getattr(self, "run", None) is not None:
            self.run.timer.stop()

    def enter(self) -> None:
        self.models.refresh()  # models trained or imported in the other panel
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume0:
            self._parameterNode.inputVolume0 = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self.models.setCurrentSpec(self._parameterNode.modelSpec or None)
            self.devices.setCurrentDevice(self._parameterNode.device)
            self._onParameterNodeSet()
            self._checkCanApply()

    # -- model, inputs, device ---------------------------------------------------------------------
    def onModelChanged(self, spec: str) -> None:
        """One input selector per model input, labelled with the input's name; then the module's controls."""
        from medai.slicer import panel

        self._modelReadable = False
        try:
            # tryWithErrorDisplay shows the error, then re-raises it: a corrupt card (or a CUDA error in the
            # device hint) must not abort setup() or enter(), so it ends here and Apply stays disabled
            with slicer.util.tryWithErrorDisplay(self.MODEL_ERROR):
                names = panel.model_inputs(spec) if spec else ["input"]
                self._inputCount = min(len(names), MAX_INPUTS)
                for n, (label, selector) in enumerate(zip(self.inputLabels, self.inputSelectors)):
                    label.visible = selector.visible = n < len(names)
                    if n < len(names):
                        label.text = f"{names[n]}:"
                if len(names) > MAX_INPUTS:
                    slicer.util.errorDisplay(f"This model has {len(names)} inputs; the panel offers {MAX_INPUTS}. "
                                             f"Use the Python console: {self.CONSOLE_CALL}")
                self._onModelChanged(spec)
            self._modelReadable = True
        except Exception:
            logging.exception("MedAI: %s (%s)", self.MODEL_ERROR, spec)
        if self._parameterNode:
            self._parameterNode.modelSpec = spec
        self._checkCanApply()

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode:
            self._parameterNode.device = self.devices.currentDevice()

    def inputNodes(self) -> list:
        return [s.currentNode() for s in self.inputSelectors[:self._inputCount]]

    def _checkCanApply(self, caller=None, event=None) -> None:
        ready = bool(self.models.currentSpec()) and self._modelReadable and all(self.inputNodes())
        self.ui.applyButton.enabled = ready or self.run.running
        self.ui.applyButton.toolTip = ("Run the model" if ready else "Select a model and a volume for every input"
                                       if self._modelReadable else self.MODEL_ERROR)

    # -- run ---------------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        """Apply starts the module's job; while it runs the same button cancels it."""
        if self.run.running:
            self.logic.cancel()
            self.run.statusLabel.text = "Cancelling..."
            return
        from MedAILib.dependencies import ensure_dependencies, optional_sets_for

        if not ensure_dependencies(optional=optional_sets_for(self.models.currentSpec())) or not self._confirmTrust():
            return
        choice = self.models.currentChoice()
        self.run.start(f"Running {choice.title if choice else 'the model'}...")
        try:
            self._startJob()
        except Exception as exc:
            self.run.finish("Not started")
            slicer.util.errorDisplay(str(exc))

    def _confirmTrust(self) -> bool:
        """A model that can run code (a bundle, or a card with expressions, not from the catalog) runs only once the
        user confirms, seeing its source and sha256; the decision is remembered for exactly this content."""
        from medai.models import trust

        spec = self.models.currentSpec()
        found = trust.untrusted_code(spec)
        if not found:
            return True
        text = (f"This model can run code on this computer when it is loaded:\n\n{spec}\nsha256 {trust.model_digest(spec)}\n\n"
                + "\n".join(found[:8]) + "\n\nRun it only if you trust its source. Trust it and run?")
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle="MedAI: trust this model?"):
            return False
        trust.trust_model(spec)
        return True

    def onCompleted(self, job) -> None:
        if job.state == "succeeded":
            self._onJobSucceeded(job)
            warnings = list(getattr(job.result, "warnings", None) or [])
            if warnings:  # doubts about the input or the result (medai.checks) stay visible in the status
                self.run.statusLabel.text = f"{self.run.statusLabel.text} Warning: {' '.join(warnings)}"

        elif job.state == "cancelled":
            self.run.finish("Cancelled; the scene was left as it was.")
        else:
            self.run.finish("Failed; the scene was left as it was.")
            slicer.util.errorDisplay(f"{self.JOB_NAME} failed: {job.error}")
        self._checkCanApply()
