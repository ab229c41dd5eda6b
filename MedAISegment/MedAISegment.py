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

import slicer
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
)
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

from MedAILib.moduleLogic import MedAIModuleLogic
from MedAILib.moduleWidget import MedAIModuleWidget


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


class MedAISegmentWidget(MedAIModuleWidget):
    """The shared panel (MedAILib.moduleWidget) plus output segmentation, Download sample and Show 3D."""

    MODEL_TASK = "segmentation"
    MODEL_ERROR = "Cannot read this model's inputs."
    CONSOLE_CALL = "MedAISegmentLogic().segment([...], model)"
    JOB_NAME = "Segmentation"

    def setup(self) -> None:
        self.setupPanel(self.resourcePath("UI/MedAISegment.ui"))

    def _createLogic(self):
        return MedAISegmentLogic()

    def _setupControls(self) -> None:
        self.ui.downloadSampleButton.connect("clicked(bool)", self.onDownloadSample)

    # -- model, sample -----------------------------------------------------------------------------
    def _onModelChanged(self, spec: str) -> None:
        from medai.slicer import panel

        choice = self.models.currentChoice()
        self.ui.downloadSampleButton.enabled = bool(choice and choice.sample)
        self.ui.hintLabel.text = panel.device_hint(spec) if spec else ""

    def onDownloadSample(self) -> None:
        from MedAILib.sampledata import loadSample

        choice = self.models.currentChoice()
        node = loadSample(choice.sample) if choice and choice.sample else None
        if node is not None:
            self.inputSelectors[0].setCurrentNode(node)

    # -- run ---------------------------------------------------------------------------------------
    def _startJob(self) -> None:
        self.logic.segment(self.inputNodes(), self.models.currentSpec(), self.ui.outputSegmentationSelector.currentNode(),
                           self.devices.currentDevice(), waitForCompletion=False,
                           progressCallback=self.run.progress, completedCallback=self.onCompleted)

    def _onJobSucceeded(self, job) -> None:
        from medai.slicer import panel

        self.run.finish("Done. " + panel.format_timings(job.timings, job.device_used, job.elapsed))
        self.ui.outputSegmentationSelector.setCurrentNode(job.node)
        if self.ui.show3DCheckBox.checked:
            job.node.CreateClosedSurfaceRepresentation()
        self.ui.hintLabel.text = panel.device_hint(str(job.model)) if job.device_used == "cpu" else ""


class MedAISegmentLogic(MedAIModuleLogic):
    """Console API; the work is done by :class:`medai.slicer.jobs.SegmentRunner`."""

    def _createRunner(self, queue):
        from medai.slicer.jobs import SegmentRunner

        return SegmentRunner(queue)

    def getParameterNode(self):
        return MedAISegmentParameterNode(super().getParameterNode())

    @property
    def lastTimings(self) -> dict:
        return dict(self.runner.logic.last_timings)

    def segment(self, inputVolumes, model, outputSegmentation=None, device: str = "auto",
                waitForCompletion: bool = True, progressCallback=None, completedCallback=None):
        """Segment ``inputVolumes`` (node or list, one per model input) with ``model`` (catalog name or path).

        Returns the segmentation node, or with ``waitForCompletion=False`` the running job at once
        (``job.cancel()``, ``job.state``, ``job.node``); ``progressCallback(fraction, stage)`` and
        ``completedCallback(job)`` are called on the main thread. Failure or cancel leaves the scene unchanged.
        """
        return self._runJob(lambda wait, completed: self.runner.segment(
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
        """Each test between its own setUp and tearDown; the model runs only where PyTorch and MONAI are installed
        (in testing mode nothing is installed: see MedAILib.dependencies)."""
        from MedAILib.dependencies import run_self_tests

        run_self_tests(self, "MedAISegment", [], [self.test_SegmentWaitAndCallbacks, self.test_FailureLeavesSceneUnchanged])

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
