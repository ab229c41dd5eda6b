"""A headless Slicer built from slicer-core's real logics (no GUI, no Qt), for plain Python.

Used by the demo, the command line's ``.mrb`` output and the tests, and meant for scripts::

    from medai.slicer.headless import make_headless_slicer, load_volume
    scene = make_headless_slicer()           # also sets slicer.mrmlScene, slicer.app, slicer.modules.*
    volumeNode = load_volume("t1.nii.gz")    # any file medai.io.read_image reads -> a volume node

``make_headless_slicer`` sets ``slicer.mrmlScene``, ``slicer.app`` (application logic only) and
``slicer.modules.<name>.logic()`` so that ``slicer.util`` helpers work as they do inside Slicer.
``load_volume`` also works inside Slicer, where it adds the node to the application's scene; for
radiographs (PNG, JPEG, DICOM) it honours the photometric interpretation and the pixel spacing.
"""

from __future__ import annotations

import os
import tempfile
import types

import slicer
import vtk


class HeadlessApp:
    """The part of ``slicer.app`` that scene code needs, backed by a real application logic."""

    def __init__(self, app_logic) -> None:
        self._app_logic = app_logic
        self.commandOptions = types.SimpleNamespace(noMainWindow=True)

    def applicationLogic(self):
        return self._app_logic

    def processEvents(self) -> None:  # nothing queued without a GUI event loop
        pass


def _module(logic) -> types.SimpleNamespace:
    return types.SimpleNamespace(logic=lambda: logic)


_CACHE_FOLDER: tempfile.TemporaryDirectory | None = None


def _cache_folder() -> str:
    """One temporary cache folder per process (removed when the process ends), shared by every headless scene."""
    global _CACHE_FOLDER
    if _CACHE_FOLDER is None:
        _CACHE_FOLDER = tempfile.TemporaryDirectory(prefix="medai-slicer-cache-")
    return _CACHE_FOLDER.name


def make_headless_slicer():
    """Create a fresh scene with application, segmentations, volumes and colors logics; returns the scene."""
    scene = slicer.vtkMRMLScene()
    # a cache and data I/O manager, as Slicer's application gives every scene (reading .mrb needs them)
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(_cache_folder())
    data_io = slicer.vtkDataIOManager()
    data_io.SetCacheManager(cache)
    scene.SetCacheManager(cache)
    scene.SetDataIOManager(data_io)
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    # Without a Slicer home folder the color logic logs that it found no default color files;
    # that is expected headless, so keep it off stderr.
    verbosity = vtk.vtkLogger.GetCurrentVerbosityCutoff()
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    try:
        colors = slicer.vtkSlicerColorLogic()
        colors.SetMRMLApplicationLogic(app_logic)
        colors.SetMRMLScene(scene)
    finally:
        vtk.vtkLogger.SetStderrVerbosity(verbosity)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLApplicationLogic(app_logic)
    segmentations.SetMRMLScene(scene)  # registers the segmentation representation converters
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLApplicationLogic(app_logic)
    volumes.SetMRMLScene(scene)
    tables = slicer.vtkSlicerTablesLogic() if hasattr(slicer, "vtkSlicerTablesLogic") else None
    if tables is not None:
        tables.SetMRMLApplicationLogic(app_logic)
        tables.SetMRMLScene(scene)
    slicer.mrmlScene = scene
    slicer.app = HeadlessApp(app_logic)
    slicer.modules = types.SimpleNamespace(
        segmentations=_module(segmentations), volumes=_module(volumes), colors=_module(colors),
        tables=_module(tables),
    )
    # keep the logics alive as long as the scene
    scene._medai_logics = (app_logic, colors, segmentations, volumes, tables, cache, data_io)  # type: ignore[attr-defined]
    return scene


def load_volume(path: str | os.PathLike, scene=None, name: str | None = None):
    """Read an image file (NRRD, NIfTI, MetaImage, DICOM series folder, PNG/JPEG/DICOM radiograph) into a new
    volume node of ``scene`` (default ``slicer.mrmlScene``; a headless one is made when there is none)."""
    from ..io import read_image
    from .scene import volume_node_from_volume

    if scene is None:
        scene = getattr(slicer, "mrmlScene", None) or make_headless_slicer()
    return volume_node_from_volume(scene, read_image(path), name)
