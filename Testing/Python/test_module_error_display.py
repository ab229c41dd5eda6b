"""Errors shown with Slicer's own ``slicer.util.tryWithErrorDisplay`` (v5.12.3), which shows and then re-raises.

The panel code around it must end the error itself: a corrupt model card chosen in the model list
(or a CUDA error in the device hint) must not abort ``setup()``/``enter()``, a failed sample download or
model import must not escape a button slot, and a failed first-run install must not escape Apply or
Train. The widgets are made without Qt (``__new__``) and given plain attribute holders for the few
controls these methods set (``.visible``, ``.text``, ``.enabled``): the code under test reads nothing
else from them.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import types

import pytest

from slicer_python import slicer_python


class Holder(types.SimpleNamespace):
    """A control the code only sets attributes on."""


def bare_widget(cls, modelSpec: str = ""):
    widget = cls.__new__(cls)
    widget._parameterNode, widget._inputCount, widget._modelReadable = None, 1, True
    widget.inputLabels = [Holder(visible=True, text="") for _ in range(4)]
    widget.inputSelectors = [Holder(visible=True, currentNode=lambda: None) for _ in range(4)]
    widget.ui = Holder(applyButton=Holder(enabled=True, toolTip=""), hintLabel=Holder(text=""),
                       downloadSampleButton=Holder(enabled=False), statusLabel=Holder(text=""))
    widget.models = Holder(currentSpec=lambda: modelSpec, currentChoice=lambda: None)
    widget.run = Holder(running=False, started=[], start=lambda status: widget.run.started.append(status))
    return widget


def test_a_corrupt_model_card_is_shown_once_and_leaves_apply_disabled(tmp_path):
    card = tmp_path / "medai.json"
    card.write_text("{ not json")
    with slicer_python() as slicer:
        MedAISegment = importlib.import_module("MedAISegment")
        widget = bare_widget(MedAISegment.MedAISegmentWidget, str(card))
        widget.onModelChanged(str(card))  # the old code re-raised here: setup() and enter() aborted
        assert len(slicer.shownErrors) == 1 and widget.MODEL_ERROR in slicer.shownErrors[0]
        assert widget.ui.applyButton.enabled is False
        assert widget.ui.applyButton.toolTip == widget.MODEL_ERROR


def test_a_readable_model_enables_apply_again(tmp_path):
    card = tmp_path / "medai.json"  # a two-input card: only its inputs are read here (no weights needed)
    card.write_text(json.dumps({"schema": "medai.card/1", "name": "two-inputs", "task": "segmentation",
                                "network": {"_target_": "monai.networks.nets.UNet"}, "weights": "model.pt",
                                "inputs": [{"name": "ch0"}, {"name": "ch1"}], "labels": {"1": {"name": "organ"}},
                                "inference": {"mode": "sliding_window", "roi_size": [32, 32, 32]}}))
    with slicer_python() as slicer:
        MedAISegment = importlib.import_module("MedAISegment")
        widget = bare_widget(MedAISegment.MedAISegmentWidget, str(card))
        widget._modelReadable = False
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        for selector in widget.inputSelectors:
            selector.currentNode = lambda: volume
        widget.onModelChanged(str(card))
        assert not slicer.shownErrors
        assert widget._inputCount == 2 and [label.text for label in widget.inputLabels[:2]] == ["ch0:", "ch1:"]
        assert [s.visible for s in widget.inputSelectors] == [True, True, False, False]
        assert widget.ui.applyButton.enabled is True


def test_a_failing_device_hint_in_the_classify_panel_does_not_abort_it(tmp_path):
    with slicer_python() as slicer:
        MedAIClassify = importlib.import_module("MedAIClassify")
        from medai.slicer import panel

        widget = bare_widget(MedAIClassify.MedAIClassifyWidget)
        items = []
        widget.ui.targetClassComboBox = Holder(blockSignals=lambda b: False, clear=items.clear,
                                               addItem=lambda label, value: items.append(value),
                                               findData=lambda v: -1, currentIndex=0, enabled=True)
        widget.ui.explainCheckBox, widget.ui.methodComboBox = Holder(checked=True), Holder(enabled=True)
        original = panel.device_hint

        def cuda_error(spec=None, gpu_bytes=None):
            raise RuntimeError("CUDA error: out of memory")

        panel.device_hint = cuda_error
        try:
            spec = panel.model_choices("classification")[0].spec
            widget.models.currentSpec = lambda: spec
            widget.onModelChanged(spec)
        finally:
            panel.device_hint = original
        assert len(slicer.shownErrors) == 1 and "CUDA error" in slicer.shownErrors[0]
        assert widget.ui.applyButton.enabled is False


def test_a_failed_sample_download_returns_none_after_showing_the_error():
    with slicer_python() as slicer:
        from MedAILib import sampledata

        assert sampledata.loadSample("no-such-sample") is None
        assert len(slicer.shownErrors) == 1
        assert "Cannot load the sample no-such-sample" in slicer.shownErrors[0] and "not in the catalog" in slicer.shownErrors[0]
        assert slicer.app.cursor == 0  # the wait cursor was restored


def test_a_failed_model_import_ends_in_its_menu_slot(tmp_path):
    with slicer_python() as slicer:
        from MedAILib.widgets import ModelSelector
        from medai.slicer import panel

        selector = ModelSelector.__new__(ModelSelector)
        selector.addModel = panel.check_import  # what addModel checks first, without QSettings
        selector._import(str(tmp_path / "missing.zip"))
        assert len(slicer.shownErrors) == 1 and "no such file" in slicer.shownErrors[0]


@pytest.mark.parametrize("slot", ["apply", "train"])
def test_a_failed_install_does_not_escape_apply_or_train(slot):
    with slicer_python(packaging=True) as slicer:
        import sys

        from MedAILib import dependencies

        MedAISegment = importlib.import_module("MedAISegment")
        dependencies.OTHER_REQUIREMENTS["medai_test_missing"] = "medai-test-missing>=1"
        installs = []

        def failing_pip(requirements, *args, **kwargs):
            installs.append(requirements)
            raise subprocess.CalledProcessError(1, ["pip", "install"])

        sys.modules["slicer.packaging"].pip_install = failing_pip
        slicer.util.confirmOkCancelDisplay = lambda *a, **k: True
        widget = bare_widget(MedAISegment.MedAISegmentWidget, "deepbet-brain")
        widget._startJob = lambda: pytest.fail("the job must not start without its dependencies")
        if slot == "apply":
            widget.onApplyButton()
            assert widget.run.started == []
        else:
            from MedAILib.trainSection import TrainSection

            section = TrainSection.__new__(TrainSection)
            section.run, section.moduleWidget = Holder(running=False), widget
            widget.logic = Holder(train=lambda *a, **k: pytest.fail("training must not start"))
            section.onTrainButton()
        assert installs == [["medai-test-missing>=1"]]
        assert len(slicer.shownErrors) == 1 and "installing the Python dependencies failed" in slicer.shownErrors[0]
