"""What the Slicer bridge owes a live Slicer: no leaked VTK collections, and no worker reading a node's buffer.

Real slicer-core MRML. ``vtkMRMLScene::GetNodesByClass`` returns a new collection that the caller
must ``UnRegister`` (vtkMRMLScene.h: "You are responsible for deleting the returned collection");
the jobs' ``prepare`` copies the voxels it hands to the worker, because the GUI stays live while the
model runs (the user can edit, replace or delete the input volume).
"""

from __future__ import annotations

import threading

import numpy as np
import slicer

from medai.geometry import Volume
from medai.slicer import classify_nodes
from medai.slicer.jobs import Job
from medai.slicer.scene import volume_from_node


class RecordingScene:
    """The real scene, recording every collection that GetNodesByClass hands out."""

    def __init__(self, scene) -> None:
        self._scene, self.collections = scene, []

    def GetNodesByClass(self, className):
        collection = self._scene.GetNodesByClass(className)
        self.collections.append(collection)
        return collection

    def __getattr__(self, name):
        return getattr(self._scene, name)


def _volume(scene, value: float = 0.0):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "input")
    slicer.util.updateVolumeFromArray(node, np.full((4, 5, 6), value, np.float32))
    return node


def test_heatmap_shown_in_every_slice_view_without_leaking_a_collection(scene):
    reference = _volume(scene)
    composites = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    heat = _volume(scene, 0.5)
    recording = RecordingScene(scene)
    assert classify_nodes.show_as_foreground(recording, heat, reference) == 3
    assert all(c.GetForegroundVolumeID() == heat.GetID() and c.GetBackgroundVolumeID() == reference.GetID()
               for c in composites)
    # a collection still registered by the C++ side besides this Python reference is a leak
    assert all(c.GetReferenceCount() == 1 for c in recording.collections), \
        [c.GetReferenceCount() for c in recording.collections]


def test_detach_arrays_copies_node_buffers_and_keeps_owned_arrays(scene):
    from medai.slicer.jobs import detach_arrays

    node = _volume(scene, 1.0)
    view = volume_from_node(node)
    owned = np.ones(3)
    prepared = detach_arrays(([view], {"mask": owned, "name": "x"}))
    copied = prepared[0][0]
    assert isinstance(copied, Volume) and copied.array.flags.owndata and not np.shares_memory(copied.array, view.array)
    assert np.array_equal(copied.array, view.array) and np.array_equal(copied.ijk_to_ras, view.ijk_to_ras)
    assert copied.metadata["node_id"] == node.GetID()
    assert prepared[1]["mask"] is owned and prepared[1]["name"] == "x"


def test_the_worker_reads_the_voxels_as_they_were_when_the_run_started(scene):
    node = _volume(scene, 1.0)
    editing_done = threading.Event()

    def compute(prepared, progress, cancel):
        assert editing_done.wait(30), "the main thread did not edit the volume"
        return float(prepared[0].array.sum())

    job = Job(compute, apply=lambda total: total, input_nodes=[node], what="sum",
              prepare=lambda: [volume_from_node(node)]).start()
    slicer.util.arrayFromVolume(node)[:] = 7.0  # the user edits the volume while the model runs
    slicer.util.arrayFromVolumeModified(node)
    editing_done.set()
    assert job.wait(timeout=60) == 4 * 5 * 6 * 1.0
