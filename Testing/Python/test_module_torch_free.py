"""A fresh Slicer has no PyTorch: the panels must build, and Apply/Train reach the dependency check, without it.

``medai.slicer.panel`` and the MedAILib modules that Slicer imports at startup or while building a
panel are imported in a subprocess where ``torch``, ``monai`` and ``scipy`` cannot be imported
(``sys.modules[name] = None``); the MedAILib modules run against minimal stand-ins for ``slicer``,
``qt`` and ``vtk``. Also: the runner-aware pump stop of ``runJob``, one model registration per training,
and the job checks of :mod:`medai.slicer.jobs` that came with them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

BLOCK = """
import sys
sys.path.insert(0, {repo!r})
for name in ("torch", "monai", "scipy"):
    sys.modules[name] = None  # "import torch" raises ImportError, find_spec("torch") is None
"""

STUBS = """
import types

class _Any:
    '''Stands in for any Qt/Slicer object: every attribute and call gives another one.'''
    def __init__(self, *a, **k): pass
    def __call__(self, *a, **k): return _Any()
    def __getattr__(self, name): return _Any()

def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    m.__getattr__ = lambda attr: _Any()
    sys.modules[name] = m
    return m

class ScriptedLoadableModuleLogic:
    def __init__(self, *a): pass

class ScriptedLoadableModuleWidget:
    def __init__(self, *a): pass

class VTKObservationMixin:
    def __init__(self): pass

_module("qt"); _module("vtk"); _module("ctk")
slicer = _module("slicer")
slicer.ScriptedLoadableModule = _module("slicer.ScriptedLoadableModule", ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
                                        ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget)
slicer.util = _module("slicer.util", VTKObservationMixin=VTKObservationMixin)
"""


def _run(code: str, stubs: bool = False) -> subprocess.CompletedProcess:
    script = BLOCK.format(repo=str(REPO)) + (STUBS if stubs else "") + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_panel_helpers_work_without_torch():
    proc = _run("""
        from medai.slicer import panel

        assert panel.device_choices() == [("auto (GPU if available)", "auto"), ("CPU", "cpu")]
        assert "not installed" in panel.device_hint("deepbet-brain")
        assert "deepbet-brain" in [c.spec for c in panel.model_choices("segmentation")]
        assert "mni-tissue-patch-resnet" in [c.spec for c in panel.model_choices("classification")]
        spec = "deepbet-brain"
        assert panel.model_inputs(spec) == ["T1"], panel.model_inputs(spec)
        panel.model_classes(spec), panel.target_class_choices(spec), panel.estimated_gpu_bytes(spec)
        try:
            panel.check_import("/no/such/model.ts")
        except panel.ModelLoadError as exc:
            assert "no such file" in str(exc)
        else:
            raise AssertionError("check_import accepted a missing file")
        assert not [m for m in ("torch", "monai", "scipy") if sys.modules.get(m) is not None]
        print("OK")
    """)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


def test_medailib_modules_import_and_logic_is_created_without_torch():
    proc = _run(stubs=True, code="""
        import MedAILib.sampledata, MedAILib.widgets, MedAILib.moduleWidget, MedAILib.trainSection
        from MedAILib.moduleLogic import MedAIModuleLogic
        from MedAILib.widgets import DeviceSelector

        logic = MedAIModuleLogic()  # what the panel's setup creates: no runner, no jobs module yet
        logic.cancel(); logic.cancelTraining(); logic.stopJobs()
        assert DeviceSelector(_Any()).devices == ["auto", "cpu"]
        assert "medai.slicer.jobs" not in sys.modules
        assert not [m for m in ("torch", "monai", "scipy") if sys.modules.get(m) is not None]
        print("OK")
    """)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


def test_format_registry_recognises_paths_without_torch(tmp_path):
    """The panels' Import model... asks the registry which format a path is, before PyTorch is installed."""
    (tmp_path / "bundle" / "configs").mkdir(parents=True)
    (tmp_path / "bundle" / "configs" / "metadata.json").write_text("{}")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "medai.json").write_text("{}")
    proc = _run(stubs=False, code=f"""
        import sys
        from pathlib import Path
        from medai.models.formats import format_for
        root = Path({str(tmp_path)!r})
        assert format_for(root / "bundle").name == "bundle"
        assert format_for(root / "mine").name == "card"
        assert [m for m in ("torch", "monai") if sys.modules.get(m) is not None] == []
        print("OK")
    """)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


def test_run_job_stops_the_pump_only_when_no_job_runs():
    proc = _run(stubs=True, code="""
        from MedAILib.widgets import runJob

        class Pump:
            def __init__(self): self.running = False
            def start(self): self.running = True
            def stop(self): self.running = False

        class Job:
            def __init__(self, done): self.done = done

        class Runner:
            job = None

        def refuse(wait, completed):
            raise RuntimeError("a segmentation is already running; cancel it or wait for it first")

        pump, runner = Pump(), Runner()
        runner.job = Job(done=False)  # the first job still runs: its pump must keep draining the queue
        pump.running = True
        try:
            runJob(pump, refuse, False, None, runner)
        except RuntimeError:
            pass
        assert pump.running
        runner.job = Job(done=True)  # nothing runs: a failed start stops the pump
        try:
            runJob(pump, refuse, False, None, runner)
        except RuntimeError:
            pass
        assert not pump.running
        print("OK")
    """)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


def test_segment_job_checks_its_output_node_and_regression_from_a_table_is_refused(scene, tmp_path):
    from medai.geometry import Volume
    from medai.slicer import scene as bridge
    from medai.slicer.jobs import SegmentJob, TrainRunner
    from medai.slicer.training_bridge import table_node_from_rows
    from medai.training import TrainConfig

    volume = bridge.volume_node_from_volume(scene, Volume(np.zeros((4, 4, 4), np.float32), np.eye(4), name="v"), "v")
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    job = SegmentJob(logic=None, input_volumes=[volume], model="m", output_segmentation=output)
    assert job.input_nodes == [volume, output]

    table = table_node_from_rows(scene, [{"volume": "v", "class": "1.5"}], "values")
    runner = TrainRunner()
    with pytest.raises(ValueError, match="regression training from a table node is not supported"):
        runner.train(table, tmp_path / "out", TrainConfig(task="regression", device="cpu"))
    assert runner.job is None and not (tmp_path / "out").exists()
