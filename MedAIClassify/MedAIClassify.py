"""MedAIClassify: class scores and an explanation heatmap for a volume (panel SKELETON).

Wiring only. The classification core and ``medai.slicer.classify_logic.ClassifyLogic`` come from
the classification work; until they are merged, Apply reports that they are missing. The
logic call runs on the main thread (``ClassifyLogic.classify`` creates nodes) with progress
pumped through ``slicer.app.processEvents``; move it onto ``medai.slicer.jobs`` once
``ClassifyLogic`` has a compute/apply split like ``SegmentLogic``.
"""

from __future__ import annotations

import slicer
import vtk
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode


class MedAIClassify(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedAI Classify"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedAI developers"]
        self.parent.helpText = "Classify a volume with a MONAI model; class scores, chart and explanation heatmap."
        self.parent.acknowledgementText = "Uses MONAI (monai.io) and PyTorch."


@parameterNodeWrapper
class MedAIClassifyParameterNode:
    inputVolume0: vtkMRMLScalarVolumeNode
    region: vtkMRMLMarkupsROINode
    explain: bool = True
    modelSpec: str = ""
    device: str = "auto"


class MedAIClassifyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedAIClassify.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedAIClassifyLogic()

        from MedAILib.widgets import DeviceSelector, ModelSelector, RunControls

        self.models = ModelSelector(self.ui.modelComboBox, self.ui.importModelButton, "classification", self.onModelChanged)
        self.devices = DeviceSelector(self.ui.deviceComboBox)
        self.run = RunControls(self.ui.applyButton, self.ui.progressBar, self.ui.statusLabel, self.ui.elapsedLabel)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, lambda *a: self.initializeParameterNode())
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = self.logic.getParameterNode()
        if not self._parameterNode.inputVolume0:
            self._parameterNode.inputVolume0 = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
        self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self.models.setCurrentSpec(self._parameterNode.modelSpec or None)
        self.devices.setCurrentDevice(self._parameterNode.device)
        self._checkCanApply()

    def onModelChanged(self, spec: str) -> None:
        from medai.slicer import panel

        self.ui.hintLabel.text = panel.device_hint(spec) if spec else "No classification model in the catalog yet: use Import model..."
        if self._parameterNode:
            self._parameterNode.modelSpec = spec
        self._checkCanApply()

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode:
            self._parameterNode.device = self.devices.currentDevice()

    def _checkCanApply(self, caller=None, event=None) -> None:
        ready = bool(self.models.currentSpec()) and bool(self.ui.inputVolume0Selector.currentNode())
        self.ui.applyButton.enabled = ready or self.run.running

    def onApplyButton(self) -> None:
        if self.run.running:
            self.logic.cancel()
            return
        from MedAILib.dependencies import ensure_dependencies

        if not ensure_dependencies():
            return
        self.run.start("Classifying...")
        try:
            result = self.logic.classify([self.ui.inputVolume0Selector.currentNode()], self.models.currentSpec(),
                                         self.ui.regionSelector.currentNode(), self.ui.explainCheckBox.checked,
                                         self.devices.currentDevice(), self.run.progress)
        except Exception as exc:
            self.run.finish("Failed or cancelled; the scene was left as it was.")
            slicer.util.errorDisplay(f"Classification failed: {exc}")
            return
        self.run.finish("Done.")
        self.ui.resultsTableView.setMRMLTableNode(result.table_node)


class MedAIClassifyLogic(ScriptedLoadableModuleLogic):
    """Console API: ``MedAIClassifyLogic().classify([volume], model)`` (delegates to ClassifyLogic)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.cancelToken = None

    def getParameterNode(self):
        return MedAIClassifyParameterNode(super().getParameterNode())

    def cancel(self) -> None:
        if self.cancelToken is not None:
            self.cancelToken.cancel()

    def classify(self, inputVolumes, model, region=None, explain: bool = True, device: str = "auto", progressCallback=None):
        try:
            from medai.slicer.classify_logic import ClassifyLogic
        except ImportError as exc:
            raise RuntimeError("the MedAI classification core is not installed in this build "
                               "(medai.slicer.classify_logic); update the MedAI extension") from exc
        from medai.engine.progress import CancelToken

        self.cancelToken = CancelToken()

        def progress(fraction, stage):
            if progressCallback is not None:
                progressCallback(fraction, stage)
            slicer.app.processEvents()  # keeps Cancel clickable while running on the main thread

        return ClassifyLogic().classify(inputVolumes, model, region=region, explain=explain, device=device,
                                        progress=progress, cancel=self.cancelToken)


class MedAIClassifyTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ParameterNodeRoundTrip()

    def test_ParameterNodeRoundTrip(self):
        self.delayDisplay("MedAIClassify: parameter node")
        params = MedAIClassifyLogic().getParameterNode()
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        params.inputVolume0, params.explain, params.modelSpec = volume, False, "some-model"
        again = MedAIClassifyLogic().getParameterNode()
        self.assertIs(again.inputVolume0, volume)
        self.assertFalse(again.explain)
        self.assertEqual(again.modelSpec, "some-model")
        self.delayDisplay("Test passed")
