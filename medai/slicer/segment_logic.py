"""MedAISegment's logic below the widget: volume nodes + model -> segmentation node.

Usable from Slicer's Python console, from the module, and headless (slicer-core)::

    from medai.slicer.segment_logic import SegmentLogic
    seg = SegmentLogic().segment([volumeNode], "deepbet-brain")
"""

from __future__ import annotations

import logging
import time

from ..batch import CohortItem, cohort_case, cohort_case_name, read_cohort_case, run_cohort
from ..geometry import Volume
from ..engine.progress import CancelToken, ProgressCallback
from ..engine.segment import segment as run_segmentation
from ..models.loader import LoadedModel, load_model
from ..results import SegmentationResult
from . import scene as bridge
from .dicom_export import place_in_source_study

log = logging.getLogger(__name__)


class SegmentLogic:
    """Runs a model on volume nodes and writes a segmentation node; the scene changes only on success."""

    def __init__(self) -> None:
        self.last_result: SegmentationResult | None = None
        self.last_timings: dict[str, float] = {}
        self.last_labelmap_node = None

    def load(self, model: str | LoadedModel, device: str = "auto", trust: bool = False) -> LoadedModel:
        """``trust``: the caller trusts a model that would run code (see :mod:`medai.models.trust`)."""
        return model if isinstance(model, LoadedModel) else load_model(model, device, trust=trust)

    def read_inputs(self, input_volumes) -> list[Volume]:
        """Main-thread part: the nodes' voxels (views, no copy) and world geometry."""
        nodes = bridge.volume_node_list(input_volumes)
        return [bridge.volume_from_node(n) for n in nodes]

    def compute_volumes(self, volumes: list[Volume], model: str | LoadedModel, device: str = "auto",
                        progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                        trust: bool = False) -> SegmentationResult:
        """The part that runs off the main thread: loads the model and segments; touches no node."""
        start = time.perf_counter()
        loaded = self.load(model, device, trust)
        load_s = time.perf_counter() - start
        result = run_segmentation(loaded, volumes, progress, cancel)
        result.timings = {"load": load_s, **result.timings}
        return result

    def compute(self, input_volumes, model: str | LoadedModel, device: str = "auto",
                progress: ProgressCallback | None = None, cancel: CancelToken | None = None, trust: bool = False) -> SegmentationResult:
        """:meth:`read_inputs` then :meth:`compute_volumes` on the calling thread; touches no node."""
        return self.compute_volumes(self.read_inputs(input_volumes), model, device, progress, cancel, trust)

    def apply(self, result: SegmentationResult, reference_node, output_segmentation=None, output_labelmap=None):
        """Main-thread part: put a finished result into the scene, all or nothing.

        If writing fails half-way, a node made here is removed and a given output node gets its
        previous segments back, so the scene is as it was. ``output_labelmap``: None (no labelmap),
        True (a new labelmap volume node) or an existing ``vtkMRMLLabelMapVolumeNode`` to fill; it
        is then available as ``last_labelmap_node``.
        """
        if output_segmentation is not None and not output_segmentation.IsA("vtkMRMLSegmentationNode"):
            raise TypeError(f"{output_segmentation.GetName()}: the output must be a segmentation node, "
                            f"not {output_segmentation.GetClassName()}; choose a segmentation or create a new one")
        with bridge.all_or_nothing(reference_node.GetScene(), output_segmentation):
            start = time.perf_counter()
            node = bridge.segmentation_node_from_result(result, reference_node, output_segmentation)
            self.last_labelmap_node = None
            if output_labelmap is not None and output_labelmap is not False:
                existing = None if output_labelmap is True else output_labelmap
                self.last_labelmap_node = bridge.labelmap_node_from_result(result, reference_node, existing)
            for made in (node, self.last_labelmap_node):  # under the source's DICOM study, ready for Export to DICOM
                if made is not None:
                    place_in_source_study(made, reference_node)
            result.timings["scene"] = time.perf_counter() - start
        self.last_result, self.last_timings = result, dict(result.timings)
        return node

    def segment(self, input_volumes, model: str | LoadedModel, output_segmentation=None, device: str = "auto",
                progress: ProgressCallback | None = None, cancel: CancelToken | None = None, output_labelmap=None,
                trust: bool = False):
        """Segment ``input_volumes`` (a node or a list; the first defines the grid); returns the segmentation node.

        ``trust=True`` runs a model that would run code (a bundle or card not from the catalog).
        """
        nodes = bridge.volume_node_list(input_volumes)
        result = self.compute(nodes, model, device, progress, cancel, trust)
        return self.apply(result, nodes[0], output_segmentation, output_labelmap)

    def segment_cohort(self, cases, model: str | LoadedModel, device: str = "auto", progress: ProgressCallback | None = None,
                       cancel: CancelToken | None = None, scene=None, trust: bool = False) -> list[CohortItem]:
        """Segment a cohort, one segmentation node per case; the model is loaded once.

        Each case is a volume node, an image file, or a list of them (its channels). A file case is
        added to ``scene`` (default: the main scene) as a volume node first. A failing case gets
        its ``error`` and the rest go on; ``progress`` spans the cohort; ``cancel`` stops it.
        """
        loaded = self.load(model, device, trust)

        def run_case(case, step, token):
            volumes = read_cohort_case(case, bridge.volume_from_node)
            result = run_segmentation(loaded, volumes, step, token)
            first = cohort_case(case)[0]
            if hasattr(first, "GetScene"):
                return self.apply(result, first)
            import slicer

            target = scene or slicer.mrmlScene
            with bridge.all_or_nothing(target):
                return self.apply(result, bridge.volume_node_from_volume(target, volumes[0]))

        return run_cohort(list(cases), run_case, cohort_case_name, progress, cancel)
