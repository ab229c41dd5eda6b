"""MedAIClassify: class scores, a scores chart and an explanation heatmap for volumes in the scene.

Thin module: the widget wires ``.ui`` controls to :mod:`MedAILib` helpers and the logic delegates
to :class:`medai.slicer.jobs.ClassifyRunner` (volumes read on the main thread, the model run on a
worker thread, the output nodes created on the main thread). Console use::

    logic = slicer.util.getModuleLogic("MedAIClassify")
    out = logic.classify([volumeNode], "/models/my-classifier/medai.json")   # waits, returns the output nodes
    out.table_node, out.chart_node, out.heatmap_node, out.findings_table_node, out.markups_node
    job = logic.classify([volumeNode], model, waitForCompletion=False,
                         progressCallback=print, completedCallback=lambda job: print(job.state, job.output))
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Union

import slicer
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
)
from slicer import (
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)

from MedAILib.moduleLogic import MedAIModuleLogic
from MedAILib.moduleWidget import MedAIModuleWidget

ALL_SEGMENTS = "(all segments)"


class MedAIClassify(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedAI Classify"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedAI developers"]
        self.parent.helpText = (
            "Classify volumes with MONAI models: class scores (table and chart), an explanation heatmap "
            "(Grad-CAM, Grad-CAM++ or occlusion) and its hot spots. See docs/slicer.md in the MedAI repository.")
        self.parent.acknowledgementText = "Uses MONAI (monai.io) and PyTorch."


@parameterNodeWrapper
class MedAIClassifyParameterNode:
    """inputVolume0..3: one per model input; region: optional segmentation or ROI (regionSegment: a segment ID,
    empty for all segments); targetClass: a class name, empty for the predicted class; resultTable: the last scores."""

    inputVolume0: vtkMRMLScalarVolumeNode
    inputVolume1: vtkMRMLScalarVolumeNode
    inputVolume2: vtkMRMLScalarVolumeNode
    inputVolume3: vtkMRMLScalarVolumeNode
    # None must be part of a node Union: the wrapper writes the default None into every new parameter node
    # (Slicer's docs: parameter_nodes/gui_connection.md)
    region: Optional[Union[vtkMRMLSegmentationNode, vtkMRMLMarkupsROINode]]
    regionSegment: str = ""
    explain: bool = True
    method: str = "gradcam"
    targetClass: str = ""
    modelSpec: str = ""
    device: str = "auto"
    resultTable: vtkMRMLTableNode


def showChart(chartNode) -> None:
    """Show ``chartNode`` in a plot view of the layout; does nothing without a GUI or a Plots module."""
    if chartNode is None or not hasattr(slicer.app, "layoutManager") or slicer.app.layoutManager() is None:
        return
    plots = getattr(slicer.modules, "plots", None)
    if plots is not None:
        plots.logic().ShowChartInLayout(chartNode)


class MedAIClassifyWidget(MedAIModuleWidget):
    """The shared panel (MedAILib.moduleWidget) plus region + segment, explain + method, target class and results."""

    MODEL_TASK = "classification"
    MODEL_ERROR = "Cannot read this model's inputs and classes."
    CONSOLE_CALL = "MedAIClassifyLogic().classify([...], model)"
    JOB_NAME = "Classification"

    def __init__(self, parent=None) -> None:
        MedAIModuleWidget.__init__(self, parent)
        self._lastChart = None

    def setup(self) -> None:
        self.setupPanel(self.resourcePath("UI/MedAIClassify.ui"))

    def _createLogic(self):
        return MedAIClassifyLogic()

    def _setupControls(self) -> None:
        from medai.slicer import panel

        for title, method in panel.EXPLAIN_METHODS:
            self.ui.methodComboBox.addItem(title, method)
        self.ui.showChartButton.connect("clicked(bool)", lambda: showChart(self._lastChart))
        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.onMethodChanged)
        self.ui.targetClassComboBox.connect("currentIndexChanged(int)", self.onTargetClassChanged)
        self.ui.regionSegmentComboBox.connect("currentIndexChanged(int)", self.onRegionSegmentChanged)
        self.ui.regionSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onRegionChanged)
        self.ui.explainCheckBox.connect("toggled(bool)", self._updateExplainControls)

    def _onParameterNodeSet(self) -> None:
        self._selectData(self.ui.methodComboBox, self._parameterNode.method)
        self.onRegionChanged(self._parameterNode.region)
        self.ui.resultsTableView.setMRMLTableNode(self._parameterNode.resultTable)

    # -- model, region, explanation ------------------------------------------------------------------
    @staticmethod
    def _selectData(comboBox, value: str) -> None:
        index = comboBox.findData(value)
        comboBox.currentIndex = index if index >= 0 else 0

    def _onModelChanged(self, spec: str) -> None:
        from medai.slicer import panel

        blocked = self.ui.targetClassComboBox.blockSignals(True)
        self.ui.targetClassComboBox.clear()
        for label, value in panel.target_class_choices(spec):
            self.ui.targetClassComboBox.addItem(label, value)
        self.ui.targetClassComboBox.blockSignals(blocked)
        self._selectData(self.ui.targetClassComboBox, self._parameterNode.targetClass if self._parameterNode else "")
        self.ui.hintLabel.text = (panel.device_hint(spec) if spec
                                  else "No classification model in the catalog yet: use Import model...")

    def onMethodChanged(self, index: int) -> None:
        if self._parameterNode:
            self._parameterNode.method = self.ui.methodComboBox.itemData(index) or "gradcam"

    def onTargetClassChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.targetClass = self.ui.targetClassComboBox.itemData(index) or ""

    def onRegionChanged(self, node) -> None:
        """A segmentation region offers its segments (all together by default); an ROI or none hides the choice."""
        isSegmentation = node is not None and node.IsA("vtkMRMLSegmentationNode")
        self.ui.regionSegmentLabel.visible = self.ui.regionSegmentComboBox.visible = isSegmentation
        blocked = self.ui.regionSegmentComboBox.blockSignals(True)
        self.ui.regionSegmentComboBox.clear()
        self.ui.regionSegmentComboBox.addItem(ALL_SEGMENTS, "")
        if isSegmentation:
            segmentation = node.GetSegmentation()
            for n in range(segmentation.GetNumberOfSegments()):
                self.ui.regionSegmentComboBox.addItem(segmentation.GetNthSegment(n).GetName(), segmentation.GetNthSegmentID(n))
        self.ui.regionSegmentComboBox.blockSignals(blocked)
        self._selectData(self.ui.regionSegmentComboBox, self._parameterNode.regionSegment if self._parameterNode else "")

    def onRegionSegmentChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.regionSegment = self.ui.regionSegmentComboBox.itemData(index) or ""

    def _updateExplainControls(self, explain: bool = True) -> None:
        self.ui.methodComboBox.enabled = self.ui.targetClassComboBox.enabled = bool(explain)

    def region(self):
        """The region argument for the logic: None, an ROI, a segmentation, or (segmentation, segment ID)."""
        node = self.ui.regionSelector.currentNode()
        segmentId = self.ui.regionSegmentComboBox.currentData if node is not None and node.IsA("vtkMRMLSegmentationNode") else ""
        return (node, segmentId) if segmentId else node

    def _checkCanApply(self, caller=None, event=None) -> None:
        MedAIModuleWidget._checkCanApply(self, caller, event)
        self._updateExplainControls(self.ui.explainCheckBox.checked)

    # -- run ---------------------------------------------------------------------------------------
    def _startJob(self) -> None:
        self.logic.classify(self.inputNodes(), self.models.currentSpec(), self.region(),
                            self.ui.explainCheckBox.checked, self.devices.currentDevice(),
                            waitForCompletion=False, progressCallback=self.run.progress,
                            completedCallback=self.onCompleted,
                            targetClass=self.ui.targetClassComboBox.currentData or None,
                            method=self.ui.methodComboBox.currentData or "gradcam")

    def _onJobSucceeded(self, job) -> None:
        from medai.slicer import panel

        out = job.output
        self.run.finish(panel.classify_summary(out.result) + "\n"
                        + panel.format_timings(job.timings, job.device_used, job.elapsed))
        self.ui.resultsTableView.setMRMLTableNode(out.table_node)
        if self._parameterNode:
            self._parameterNode.resultTable = out.table_node
        self._lastChart = out.chart_node
        self.ui.showChartButton.enabled = out.chart_node is not None
        showChart(out.chart_node)
        warnings = "\n".join(out.result.warnings)
        self.ui.hintLabel.text = warnings or (panel.device_hint(str(job.model)) if job.device_used == "cpu" else "")


class MedAIClassifyLogic(MedAIModuleLogic):
    """Console API; the work is done by :class:`medai.slicer.jobs.ClassifyRunner`."""

    def _createRunner(self, queue):
        from medai.slicer.jobs import ClassifyRunner

        return ClassifyRunner(queue)

    def getParameterNode(self):
        return MedAIClassifyParameterNode(super().getParameterNode())

    @property
    def lastTimings(self) -> dict:
        job = self.runner.job
        return dict(job.timings) if job is not None else {}

    def classify(self, inputVolumes, model, region=None, explain: bool = True, device: str = "auto",
                 waitForCompletion: bool = True, progressCallback=None, completedCallback=None,
                 targetClass=None, method: str = "gradcam", margin=None, hotspotThreshold: float = 0.5):
        """Classify ``inputVolumes`` (node or list: one per model input, or a cohort of cases) with ``model``.

        ``region``: None, a segmentation node, ``(segmentationNode, segmentIdOrName)`` or a markups ROI.
        ``targetClass`` (name or index) is the class the heatmap explains (None: the predicted one);
        ``method``: "gradcam", "gradcam++" or "occlusion" (slow); ``margin``: crop margin around the region
        (fraction of its size; None: the card's); ``hotspotThreshold``: heatmap level of a hot spot. Returns a ``ClassifyOutput``
        (``table_node``, ``chart_node``, ``heatmap_node``, ``findings_table_node``, ``markups_node``), or
        with ``waitForCompletion=False`` the running job at once (``job.cancel()``, ``job.state``,
        ``job.output``); ``progressCallback(fraction, stage)`` and ``completedCallback(job)`` are called
        on the main thread. Failure or cancel leaves the scene unchanged.
        """
        return self._runJob(lambda wait, completed: self.runner.classify(
            inputVolumes, model, region, wait, progressCallback, completed, poll=slicer.app.processEvents,
            explain=explain, device=device, target_class=targetClass, method=method, margin=margin,
            hotspot_threshold=hotspotThreshold), waitForCompletion, completedCallback)


class MedAIClassifyTest(ScriptedLoadableModuleTest):
    """Runs in seconds: a tiny MONAI DenseNet with made-up weights on a small synthetic volume."""

    def setUp(self):
        slicer.mrmlScene.Clear()
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def runTest(self):
        """Each test between its own setUp and tearDown; the model runs only where PyTorch and MONAI are installed
        (in testing mode nothing is installed: see MedAILib.dependencies)."""
        from MedAILib.dependencies import run_self_tests

        run_self_tests(self, "MedAIClassify", [self.test_ParameterNodeRoundTrip], [self.test_ClassifyWaitAndCallbacks, self.test_FailureLeavesSceneUnchanged])

    def _card(self) -> str:
        import json

        import torch
        from monai.networks.nets import DenseNet

        from medai.fetch import sha256_of

        network = {"_target_": "monai.networks.nets.DenseNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                   "init_features": 8, "growth_rate": 4, "block_config": [2, 2], "bn_size": 2}
        torch.manual_seed(0)
        weights = os.path.join(self.tmp.name, "model.pt")
        torch.save(DenseNet(**{k: v for k, v in network.items() if k != "_target_"}).state_dict(), weights)
        card = {"schema": "medai.card/1", "name": "tiny-densenet", "task": "classification", "network": network,
                "weights": "model.pt", "sha256": sha256_of(weights), "inputs": [{"name": "CT"}],
                "classes": ["normal", "benign", "malignant"],
                "preprocessing": {"orientation": "RAS", "intensity": [{"op": "zscore"}]},
                "inference": {"mode": "resize", "roi_size": [32, 32, 32], "activation": "softmax"}}
        path = os.path.join(self.tmp.name, "medai.json")
        with open(path, "w") as fh:
            json.dump(card, fh)
        return path

    def _volume(self, components: int = 1):
        import numpy as np

        shape = (18, 22, 26) if components == 1 else (18, 22, 26, components)
        array = np.random.default_rng(0).normal(size=shape).astype("float32")
        array[6:12, 8:14, 10:16] += 4.0
        if components == 1:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "synthetic")
        else:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "two-channel")
        node.SetSpacing(1.5, 1.5, 2.0)
        slicer.util.updateVolumeFromArray(node, array)
        return node

    def test_ParameterNodeRoundTrip(self):
        self.delayDisplay("MedAIClassify: parameter node")
        params = MedAIClassifyLogic().getParameterNode()
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
        params.inputVolume0, params.explain, params.modelSpec = volume, False, "some-model"
        params.region, params.method, params.targetClass = roi, "occlusion", "benign"
        again = MedAIClassifyLogic().getParameterNode()
        self.assertIs(again.inputVolume0, volume)
        self.assertIs(again.region, roi)
        self.assertFalse(again.explain)
        self.assertEqual((again.modelSpec, again.method, again.targetClass), ("some-model", "occlusion", "benign"))
        self.delayDisplay("Test passed")

    def test_ClassifyWaitAndCallbacks(self):
        self.delayDisplay("MedAIClassify: tiny DenseNet, waitForCompletion True and False")
        card, volume = self._card(), self._volume()
        logic = MedAIClassifyLogic()
        out = logic.classify([volume], card, device="cpu")
        for name in ("table_node", "chart_node", "heatmap_node", "findings_table_node", "markups_node"):
            node = getattr(out, name)
            self.assertIsNotNone(node, name)
            self.assertIs(node.GetScene(), slicer.mrmlScene, name)
        self.assertEqual(out.table_node.GetNumberOfRows(), 3)
        self.assertEqual(out.heatmap_node.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        self.assertIn("load", logic.lastTimings)
        done, fractions = [], []
        job = logic.classify(volume, card, explain=True, device="cpu", waitForCompletion=False, method="gradcam++",
                             targetClass="benign", progressCallback=lambda f, s: fractions.append(f),
                             completedCallback=done.append)
        self.assertFalse(done)  # returned at once
        out2 = job.wait(timeout=60, poll=slicer.app.processEvents)
        self.assertEqual(done, [job])
        self.assertTrue(fractions)
        self.assertEqual(out2.heatmap_node.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        showChart(out2.chart_node)  # a plot view where the layout has one; nothing headless
        self.delayDisplay("Test passed")

    def test_FailureLeavesSceneUnchanged(self):
        self.delayDisplay("MedAIClassify: wrong channel count and an empty region leave the scene unchanged")
        card, volume = self._card(), self._volume()
        twoChannel = self._volume(components=2)
        seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty region")
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentId = seg.GetSegmentation().AddEmptySegment("lesion")
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(Exception):
            MedAIClassifyLogic().classify([twoChannel], card, device="cpu")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        with self.assertRaises(Exception):
            MedAIClassifyLogic().classify([volume], card, region=(seg, segmentId), device="cpu")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Test passed")
