"""MedAIClassify's logic below the widget: volume nodes (+ region) + model -> tables, chart, heatmap, markups.

Usable from Slicer's Python console, from the module, and headless (slicer-core)::

    from medai.slicer.classify_logic import ClassifyLogic
    out = ClassifyLogic().classify([volumeNode], "my-classifier.json")
    out.table_node, out.chart_node, out.heatmap_node, out.findings_table_node, out.markups_node

``compute`` reads the nodes and runs the model (may run off the main thread, touches no node);
``apply`` creates the output nodes on the main thread. A failed or cancelled run adds nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..batch import CohortItem, cohort_case_name, read_cohort_case, run_cohort
from ..engine.classify import ClassificationResult
from ..engine.classify import classify as run_classification
from ..engine.progress import CancelToken, ProgressCallback
from ..geometry import GeometryError, Volume, crop_affine, same_grid
from ..models.loader import LoadedModel, load_model
from ..requests import ClassifyRequest, request_from
from ..resample import resample_volume_to
from . import classify_nodes as nodes
from . import scene as bridge
from .dicom_export import place_in_source_study

log = logging.getLogger(__name__)


@dataclass
class ClassifyOutput:
    """The nodes a classification put into the scene (None where not produced)."""

    result: ClassificationResult
    table_node: object = None
    chart_node: object = None
    heatmap_node: object = None  # the first case's heatmap; all of them in ``heatmap_nodes``
    findings_table_node: object = None
    markups_node: object = None
    heatmap_nodes: list = field(default_factory=list)


def _segment_ids(seg_node, segment_id: str | None) -> list[str]:
    segmentation = seg_node.GetSegmentation()
    if segment_id is not None:
        if segmentation.GetSegment(segment_id) is None:
            names = [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
            by_name = segmentation.GetSegmentIdBySegmentName(segment_id)
            if not by_name:
                raise GeometryError(f"{seg_node.GetName()} has no segment {segment_id!r} (segments: {', '.join(names) or 'none'})")
            segment_id = by_name
        return [segment_id]
    ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    if not ids:
        raise GeometryError(f"region {seg_node.GetName()} has no segments; add and paint a segment first")
    return ids


def _segment_volume(seg_node, segment_id: str) -> Volume | None:
    """A segment's own binary labelmap (its extent, in world geometry) as a volume, or None when it is empty.

    Adds no node and leaves the user's segmentation as it is: a segmentation whose source is not a
    binary labelmap (e.g. closed surfaces) is converted in a copy. The segmentation's linear parent
    transform is applied, like the volume's.
    """
    segmentation = seg_node.GetSegmentation()
    if not segmentation.ContainsRepresentation(bridge.BINARY_LABELMAP):
        copy = slicer.vtkSegmentation()
        copy.DeepCopy(segmentation)
        if not copy.CreateRepresentation(bridge.BINARY_LABELMAP):
            raise GeometryError(f"{seg_node.GetName()}: cannot convert its segments to a binary labelmap; convert them in the Segmentations module first")
        segmentation = copy
    segment = segmentation.GetSegment(segment_id)
    image = segment.GetRepresentation(bridge.BINARY_LABELMAP)
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        return None
    extent = image.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return None
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    mask = (array == segment.GetLabelValue()).astype(np.uint8)
    if not mask.any():
        return None
    to_world = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(to_world)  # segmentation-node coordinates
    affine = crop_affine(bridge.node_to_world(seg_node) @ bridge._matrix_to_numpy(to_world), [extent[0], extent[2], extent[4]])
    return Volume(mask, affine, segment.GetName())


def region_volume(region, reference_node) -> Volume:
    """A region (segmentation node, ``(segmentation node, segment ID or name)``, markups ROI or labelmap node) as a mask on the reference grid."""
    ref = bridge.volume_from_node(reference_node)
    ref_affine = ref.ijk_to_ras
    if isinstance(region, (tuple, list)):
        seg_node, segment_id = region
    else:
        seg_node, segment_id = region, None
    if seg_node.IsA("vtkMRMLSegmentationNode"):
        ids = _segment_ids(seg_node, segment_id)
        name = seg_node.GetSegmentation().GetSegment(ids[0]).GetName() if len(ids) == 1 else seg_node.GetName()
        mask = np.zeros(ref.array.shape[:3], dtype=bool)
        for sid in ids:
            own = _segment_volume(seg_node, sid)
            if own is None:
                raise GeometryError(f"segment {seg_node.GetSegmentation().GetSegment(sid).GetName()!r} of {seg_node.GetName()} is empty; paint it before classifying that region")
            on_ref = own.array if same_grid(own, ref) else resample_volume_to(own, ref, linear=False).array
            mask |= on_ref > 0
        if not mask.any():
            raise GeometryError(f"region {name} lies outside volume {reference_node.GetName()}; choose a region that overlaps the image")
        mask = mask.astype(np.uint8)
        return Volume(mask, ref_affine, name, {"kind": "segment"})
    if seg_node.IsA("vtkMRMLMarkupsROINode"):
        to_world = seg_node.GetObjectToWorldMatrix()
        world_to_obj = np.linalg.inv(bridge._matrix_to_numpy(to_world))
        size = np.array(seg_node.GetSize())
        if not np.all(size > 0):
            raise GeometryError(f"ROI {seg_node.GetName()} is empty (size {size.tolist()}); place and size the ROI first")
        inside = _roi_mask(ref.array.shape[:3], ref_affine, world_to_obj, size)
        if not inside.any():
            raise GeometryError(f"ROI {seg_node.GetName()} lies outside volume {reference_node.GetName()}; move the ROI onto the image")
        return Volume(inside.astype(np.uint8), ref_affine, seg_node.GetName(), {"kind": "roi"})
    if seg_node.IsA("vtkMRMLScalarVolumeNode"):
        vol = bridge.volume_from_node(seg_node)
        return Volume((np.asarray(vol.array) > 0).astype(np.uint8), vol.ijk_to_ras, seg_node.GetName(), {"kind": "segment"})
    raise GeometryError(f"region {seg_node.GetName()}: {seg_node.GetClassName()} is not a segmentation, markups ROI or labelmap node")


def _roi_mask(shape_kji: tuple, ijk_to_ras: np.ndarray, world_to_obj: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Voxels whose centres lie in the ROI box; only the index box around the ROI's corners is tested."""
    corners = np.array([[sx, sy, sz, 1.0] for sx in (-0.5, 0.5) for sy in (-0.5, 0.5) for sz in (-0.5, 0.5)]) * np.r_[size, 1.0]
    ijk = (np.linalg.inv(ijk_to_ras) @ np.linalg.inv(world_to_obj) @ corners.T)[:3].T
    dims = np.array(shape_kji[::-1])
    lo = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, dims)
    hi = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 1, 0, dims)
    mask = np.zeros(shape_kji, dtype=bool)
    if np.any(hi <= lo):
        return mask
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1).reshape(-1, 3)
    obj = (world_to_obj @ ijk_to_ras)[:3] @ np.c_[grid, np.ones(len(grid))].T
    inside = np.all(np.abs(obj.T) <= size / 2 + 1e-6, axis=1).reshape(*(hi - lo))
    mask[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = inside.transpose(2, 1, 0)
    return mask


class ClassifyLogic:
    """Runs a classification model on volume nodes and writes its outputs; the scene changes only on success."""

    def __init__(self) -> None:
        self.last_result: ClassificationResult | None = None
        self.last_output: ClassifyOutput | None = None

    def load(self, model: str | LoadedModel, device: str = "auto", trust: bool = False) -> LoadedModel:
        """``trust``: the caller trusts a model that would run code (see :mod:`medai.models.trust`)."""
        return model if isinstance(model, LoadedModel) else load_model(model, device, trust=trust)

    def read_inputs(self, inputVolumes, region=None) -> tuple[list[Volume], Volume | None]:
        """Main-thread part: the volumes and the region mask as arrays (views of the nodes' voxels); adds no node.

        Reading a segmentation region may convert its representation, so this must run on the main thread.
        """
        input_nodes = bridge.volume_node_list(inputVolumes)
        volumes = [bridge.volume_from_node(n) for n in input_nodes]
        mask = region_volume(region, input_nodes[0]) if region is not None else None
        return volumes, mask

    def compute_volumes(self, volumes: list[Volume], mask: Volume | None, model: str | LoadedModel, request: ClassifyRequest,
                        progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> ClassificationResult:
        """Off-main-thread part: loads the model and runs it on arrays read by :meth:`read_inputs`; touches no node."""
        start = time.perf_counter()
        loaded = self.load(model, request.device, request.trust)
        load_s = time.perf_counter() - start
        result = run_classification(loaded, volumes, mask, request, progress, cancel)
        result.timings = {"load": load_s, **result.timings}
        return result

    def compute(self, inputVolumes, model: str | LoadedModel, region=None, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None, **options) -> ClassificationResult:
        """:meth:`read_inputs` then :meth:`compute_volumes` on the calling thread; touches no node.

        ``options``: the fields of :class:`~medai.requests.ClassifyRequest` (device, explain, target_class,
        method, margin, hotspot_threshold).
        """
        volumes, mask = self.read_inputs(inputVolumes, region)
        return self.compute_volumes(volumes, mask, model, request_from(ClassifyRequest, options), progress, cancel)

    def apply(self, result: ClassificationResult, show: bool = True) -> ClassifyOutput:
        """Main-thread part: put a finished result into the scene (tables, chart, heatmaps, findings), all or nothing."""
        scene = result.cases[0].reference.metadata.get("scene") or slicer.mrmlScene  # the inputs' own scene
        refs = [scene.GetNodeByID(c.reference.metadata.get("node_id", "")) for c in result.cases]
        out = ClassifyOutput(result)
        with bridge.all_or_nothing(scene):
            out.table_node = nodes.scores_table_node(scene, result)
            out.chart_node = nodes.scores_chart_node(scene, out.table_node, result)
            for case, ref in zip(result.cases, refs):
                if case.heatmap is not None and ref is not None:
                    out.heatmap_nodes.append(nodes.heatmap_node(scene, case, result, ref))
                    place_in_source_study(out.heatmap_nodes[-1], ref)  # under the source's DICOM study
            findings = result.findings
            if findings:
                out.findings_table_node = nodes.findings_table_node(scene, findings, f"{result.model_name} findings")
                out.markups_node = nodes.findings_markups_node(scene, findings, f"{result.model_name} findings")
        if out.heatmap_nodes:
            out.heatmap_node = out.heatmap_nodes[0]
            if show:  # views change last, once every node exists
                nodes.show_as_foreground(scene, out.heatmap_node, refs[0])
        for warning in result.warnings:
            log.warning(warning)
        self.last_result, self.last_output = result, out
        return out

    def classify(self, inputVolumes, model: str | LoadedModel, region=None, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None, **options) -> ClassifyOutput:
        """Classify ``inputVolumes`` (a node or a list: channels of one case, or a cohort); returns the output nodes.

        ``options``: the fields of :class:`~medai.requests.ClassifyRequest` (device, explain, target_class,
        method, margin, hotspot_threshold, trust: run a model that would run code, e.g. a bundle not from the catalog).
        """
        return self.apply(self.compute(inputVolumes, model, region, progress, cancel, **options))

    def classify_cohort(self, cases, model: str | LoadedModel, progress: ProgressCallback | None = None,
                        cancel: CancelToken | None = None, **options) -> tuple[ClassifyOutput | None, list[CohortItem]]:
        """Classify a cohort case by case (a volume node, an image file, or a list of them = its channels).

        The model is loaded once; a failing case gets its ``error`` and the rest go on. The cases that
        succeeded go into one scores table (a row per case) and chart; returns that output (None when
        none succeeded) and one item per case whose ``result`` is its :class:`ClassificationResult`.
        ``options``: the fields of :class:`~medai.requests.ClassifyRequest` (default here: no explanation).
        """
        request = request_from(ClassifyRequest, {"explain": False, **options})
        loaded = self.load(model, request.device, request.trust)

        def run_case(case, step, token):
            return run_classification(loaded, read_cohort_case(case, bridge.volume_from_node), None, request, step, token)

        items = run_cohort(list(cases), run_case, cohort_case_name, progress, cancel)
        done = [item.result for item in items if item.result is not None]
        if not done:
            return None, items
        merged = done[0]
        merged = ClassificationResult(merged.model_name, merged.task, merged.class_names, [c for r in done for c in r.cases],
                                      merged.thresholds, merged.unit, merged.method, merged.device,
                                      warnings=list(dict.fromkeys(w for r in done for w in r.warnings)))
        return self.apply(merged), items
