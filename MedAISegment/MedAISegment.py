"""MedAISegment: run a MONAI segmentation model on volumes in the scene.

Thin module: the widget wires ``.ui`` controls to :mod:`MedAILib` helpers and the logic delegates
to :class:`medai.slicer.jobs.SegmentRunner` (worker thread + main-thread queue). Console use::

    logic = slicer.util.getModuleLogic("MedAISegment")
    seg = logic.segment([volumeNode], "deepbet-brain")                    # waits, returns the node
    job = logic.segment([volumeNode], "deepbet-brain", waitForCompletion=False,
                        progressCallback=print, completedCallback=lambda job: print(job.state))
"""

from __future__ import annotations

import os
import tempfile

import qt
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
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

MAX_INPUTS = 4


class MedAISegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedAI Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedAI developers"]
        self.parent.helpText = (
            "Segment volumes with MONAI deep-learning models (catalog, MONAI Bundles, model cards, TorchScript). "
            "See docs/slicer.md in the MedAI repository.")
        self.parent.acknowledgementText = "Uses MONAI (monai.io) and PyTorch."
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    from MedAILib.sampledata import registerSampleData as register

    register(os.path.join(os.path.dirname(__file__), "Resources", "Icons"))


@parameterNodeWrapper
class MedAISegmentParameterNode:
    """inputVolume0..3: one per model input; outputSegmentation: None creates a new node on success."""

    inputVolume0: vtkMRMLScalarVolumeNode
    inputVolume1: vtkMRMLScalarVolumeNode
    inputVolume2: vtkMRMLScalarVolumeNode
    inputVolume3: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modelSpec: str = ""
    device: str = "auto"


class MedAISegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedAISegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedAISegmentLogic()

        from MedAILib.widgets import DeviceSelector, ModelSelector, RunControls

        self.inputSelectors = [self.ui.inputVolume0Selector, self.ui.inputVolume1Selector,
                               self.ui.inputVolume2Selector, self.ui.inputVolume3Selector]
        self.inputLabels = [self.ui.inputVolume0Label, self.ui.inputVolume1Label,
                            self.ui.inputVolume2Label, self.ui.inputVolume3Label]
        self.run = RunControls(self.ui.applyButton, self.ui.progressBar, self.ui.statusLabel, self.ui.elapsedLabel)
        # the model selector calls onModelChanged -> _checkCanApply at once: self.run must exist before it
        self.models = ModelSelector(self.ui.modelComboBox, self.ui.importModelButton, "segmentation", self.onModelChanged)
        self.devices = DeviceSelector(self.ui.deviceComboBox)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.downloadSampleButton.connect("clicked(bool)", self.onDownloadSample)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
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
            self._checkCanApply()

    # -- model, inputs, device ---------------------------------------------------------------------
    def onModelChanged(self, spec: str) -> None:
        from medai.slicer import panel

        with slicer.util.tryWithErrorDisplay("Cannot read this model's inputs."):
            names = panel.model_inputs(spec) if spec else ["input"]
            for n, (label, selector) in enumerate(zip(self.inputLabels, self.inputSelectors)):
                label.visible = selector.visible = n < len(names)
                if n < len(names):
                    label.text = f"{names[n]}:"
            if len(names) > MAX_INPUTS:
                slicer.util.errorDisplay(f"This model has {len(names)} inputs; the panel offers {MAX_INPUTS}. "
                                         "Use the Python console: MedAISegmentLogic().segment([...], model)")
            choice = self.models.currentChoice()
            self.ui.downloadSampleButton.enabled = bool(choice and choice.sample)
            self.ui.hintLabel.text = panel.device_hint(spec) if spec else ""
        if self._parameterNode:
            self._parameterNode.modelSpec = spec
        self._checkCanApply()

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode:
            self._parameterNode.device = self.devices.currentDevice()

    def inputNodes(self) -> list:
        return [s.currentNode() for s in self.inputSelectors if s.visible]

    def _checkCanApply(self, caller=None, event=None) -> None:
        ready = bool(self.models.currentSpec()) and all(self.inputNodes())
        self.ui.applyButton.enabled = ready or self.run.running
        self.ui.applyButton.toolTip = "Run the model" if ready else "Select a model and a volume for every input"

    def onDownloadSample(self) -> None:
        from MedAILib.sampledata import loadSample

        choice = self.models.currentChoice()
        node = loadSample(choice.sample) if choice and choice.sample else None
        if node is not None:
            self.inputSelectors[0].setCurrentNode(node)

    # -- run ---------------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self.run.running:
            self.logic.cancel()
            self.run.statusLabel.text = "Cancelling..."
            return
        from MedAILib.dependencies import ensure_dependencies

        if not ensure_dependencies():
            return
        self.run.start(f"Running {self.models.currentChoice().title}...")
        try:
            self.logic.segment(self.inputNodes(), self.models.currentSpec(), self.ui.outputSegmentationSelector.currentNode(),
                               self.devices.currentDevice(), waitForCompletion=False,
                               progressCallback=self.run.progress, completedCallback=self.onCompleted)
        except Exception as exc:
            self.run.finish("Not started")
            slicer.util.errorDisplay(str(exc))

    def onCompleted(self, job) -> None:
        from medai.slicer import panel

        if job.state == "succeeded":
            self.run.finish("Done. " + panel.format_timings(job.timings, job.device_used, job.elapsed))
            self.ui.outputSegmentationSelector.setCurrentNode(job.node)
            if self.ui.show3DCheckBox.checked:
                job.node.CreateClosedSurfaceRepresentation()
            self.ui.hintLabel.text = panel.device_hint(str(job.model)) if job.device_used == "cpu" else ""
        elif job.state == "cancelled":
            self.run.finish("Cancelled; the scene was left as it was.")
        else:
            self.run.finish("Failed; the scene was left as it was.")
            slicer.util.errorDisplay(f"Segmentation failed: {job.error}")
        self._checkCanApply()


class MedAISegmentLogic(ScriptedLoadableModuleLogic):
    """Console API; the work is done by :class:`medai.slicer.jobs.SegmentRunner`."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from medai.slicer.jobs import MainThreadQueue, SegmentRunner
        from MedAILib.widgets import QueuePump

        self.queue = MainThreadQueue()
        self.runner = SegmentRunner(self.queue)
        self.pump = QueuePump(self.queue)

    def getParameterNode(self):
        return MedAISegmentParameterNode(super().getParameterNode())

    @property
    def lastTimings(self) -> dict:
        return dict(self.runner.logic.last_timings)

    def cancel(self) -> None:
        if self.runner.job is not None:
            self.runner.job.cancel()

    def segment(self, inputVolumes, model, outputSegmentation=None, device: str = "auto",
                waitForCompletion: bool = True, progressCallback=None, completedCallback=None):
        """Segment ``inputVolumes`` (node or list, one per model input) with ``model`` (catalog name or path).

        Returns the segmentation node, or with ``waitForCompletion=False`` the running job at once
        (``job.cancel()``, ``job.state``, ``job.node``); ``progressCallback(fraction, stage)`` and
        ``completedCallback(job)`` are called on the main thread. Failure or cancel leaves the scene unchanged.
        """
        from MedAILib.widgets import runJob

        return runJob(self.pump, lambda wait, completed: self.runner.segment(
            inputVolumes, model, outputSegmentation, device, wait, progressCallback, completed,
            poll=slicer.app.processEvents), waitForCompletion, completedCallback)


class MedAISegmentTest(ScriptedLoadableModuleTest):
    """Runs in seconds: a tiny MONAI UNet with made-up weights on a small synthetic volume."""

    def setUp(self):
        slicer.mrmlScene.Clear()
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def runTest(self):
        self.setUp()
        self.test_SegmentWaitAndCallbacks()
        self.setUp()
        self.test_FailureLeavesSceneUnchanged()
        self.tearDown()

    def _card(self) -> str:
        import json

        import torch
        from monai.networks.nets import UNet

        from medai.fetch import sha256_of

        network = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                   "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}
        torch.manual_seed(0)
        weights = os.path.join(self.tmp.name, "model.pt")
        torch.save(UNet(**{k: v for k, v in network.items() if k != "_target_"}).state_dict(), weights)
        card = {"schema": "medai.card/1", "name": "tiny-unet", "task": "segmentation", "network": network,
                "weights": "model.pt", "sha256": sha256_of(weights), "inputs": [{"name": "image"}],
                "preprocessing": {"orientation": "RAS", "spacing": [2.0, 2.0, 2.0], "intensity": [{"op": "zscore"}]},
                "inference": {"mode": "sliding_window", "roi_size": [32, 32, 32], "activation": "softmax"},
                "labels": {"1": {"name": "organ", "color": [1.0, 0.0, 0.0]}}}
        path = os.path.join(self.tmp.name, "medai.json")
        with open(path, "w") as fh:
            json.dump(card, fh)
        return path

    def _volume(self):
        import numpy as np

        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synthetic")
        node.SetSpacing(2.0, 2.0, 2.0)
        slicer.util.updateVolumeFromArray(node, np.random.default_rng(0).normal(100, 20, (24, 28, 20)).astype("float32"))
        return node

    def test_SegmentWaitAndCallbacks(self):
        self.delayDisplay("MedAISegment: tiny UNet, waitForCompletion True and False")
        card, volume = self._card(), self._volume()
        logic = MedAISegmentLogic()
        seg = logic.segment([volume], card)
        self.assertTrue(seg.IsA("vtkMRMLSegmentationNode"))
        self.assertEqual(seg.GetSegmentation().GetNthSegment(0).GetName(), "organ")
        self.assertIn("inference", logic.lastTimings)
        done, fractions = [], []
        job = logic.segment(volume, card, seg, waitForCompletion=False,
                            progressCallback=lambda f, s: fractions.append(f), completedCallback=done.append)
        self.assertFalse(done)  # returned at once
        self.assertIs(job.wait(timeout=60, poll=slicer.app.processEvents), seg)  # same node reused
        self.assertEqual(done, [job])
        self.assertTrue(fractions)
        self.delayDisplay("Test passed")

    def test_FailureLeavesSceneUnchanged(self):
        self.delayDisplay("MedAISegment: wrong channel count leaves the scene unchanged")
        card, volume = self._card(), self._volume()
        other = self._volume()
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(Exception):
            MedAISegmentLogic().segment([volume, other], card)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Test passed")
