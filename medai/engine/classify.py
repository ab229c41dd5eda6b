"""Classification engine: volumes (+ optional region) + loaded model -> class scores, heatmaps on the input grid, findings.

Task kinds: single-label multi-class (softmax, predicted = argmax), multi-label (sigmoid, a
threshold per class) and regression (raw values with the card's unit). One call handles a
cohort: when every input volume alone has the channels the model needs, each is its own case;
when the volumes together have them, they are the channels of one case.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import heatmap_warnings, input_warnings
from ..explain.gradcam import METHOD_TITLES, METHODS, ExplainUnavailable, explain as explain_heatmap
from ..explain.localize import Finding, hot_spots, region_components
from ..geometry import GeometryError, Volume, array_from_ijk, crop_affine, reorient_to_ras, same_grid
from ..models.card import ModelCardError, Stage
from ..models.loader import LoadedModel
from ..requests import ClassifyRequest, request_from
from ..resample import resample_volume_to
from .common import activation as apply_activation
from .common import autocast, stack_inputs
from .cpu_memory import call_network
from .intensity import apply_intensity
from .out_of_memory import way_out_when_out_of_memory
from .postprocess import bounding_box
from .progress import CancelToken, Progress, ProgressCallback

log = logging.getLogger(__name__)

CLASSIFY_TASKS = ("classification", "multilabel", "regression")


# --- what the model says about its outputs ---------------------------------------------------


@dataclass
class OutputSpec:
    """Class names, task kind, activation, per-class thresholds (multi-label) and unit (regression)."""

    task: str
    names: list[str]
    activation: str
    thresholds: list[float]
    unit: str = ""
    channels: int = 1
    spatial_dims: int = 3
    layer: str | None = None


def _network_int(net_cfg: dict | None, *keys: str) -> int | None:
    for key in keys:
        if isinstance(net_cfg, dict) and isinstance(net_cfg.get(key), int):
            return int(net_cfg[key])
    return None


def _bundle_spec(model: LoadedModel) -> OutputSpec:
    card = model.card
    act = "softmax"
    post = model.bundle.postprocessing if model.bundle else None
    for t in getattr(post, "transforms", ()):
        conv = getattr(t, "converter", t)
        if getattr(conv, "sigmoid", False):
            act = "sigmoid"
        elif getattr(conv, "softmax", False):
            act = "softmax"
    return OutputSpec("classification", list(card.classes), act, [0.5] * len(card.classes), channels=card.num_inputs,
                      spatial_dims=card.spatial_dims or 3)


def output_spec(model: LoadedModel) -> OutputSpec:
    """How to read ``model``'s output; raises when the model is not a classification/regression model."""
    card = model.card
    if model.kind == "bundle":
        if card.task != "classification":
            raise ModelCardError(f"model {card.name} is a {card.task} bundle; use it with MedAISegment / `medai segment`")
        return _bundle_spec(model)
    if card.task not in CLASSIFY_TASKS:
        raise ModelCardError(f"model {card.name} is a {card.task} model; use it with MedAISegment / `medai segment`")
    stage = card.stages[-1]
    names = list(card.classes)
    if not names and card.labels:
        names = [lab.name for lab in card.labels]
    net_cfg = stage.network
    n_out = _network_int(net_cfg, "out_channels", "num_classes", "classes", "n_classes", "out_features")
    if not names:
        names = ["score"] if card.task == "regression" else [f"class {i}" for i in range(n_out or 2)]
    if n_out is not None and n_out != len(names) and not (n_out == 1 and len(names) == 2 and card.task == "classification"):
        raise ModelCardError(f"{card.name}: the card names {len(names)} classes but the network has {n_out} outputs; fix 'classes'")
    per_class = card.class_thresholds
    thr = [per_class[i] if i < len(per_class) and per_class[i] is not None else card.threshold for i in range(len(names))]
    channels = sum(int(i.get("channels", 1)) for i in card.inputs) if card.inputs else 1
    channels = _network_int(net_cfg, "in_channels", "n_input_channels", "in_chns") or channels
    dims = len(stage.roi_size) if stage.roi_size else (_network_int(net_cfg, "spatial_dims") or 3)
    return OutputSpec(card.task, names, stage.activation, thr, card.unit, channels, dims, card.explain_layer)


# --- results -----------------------------------------------------------------------------------


@dataclass
class CaseResult:
    """One classified case: scores per class, predicted classes, heatmap on the reference grid, findings."""

    name: str
    reference: Volume
    scores: np.ndarray
    predicted: list[int]
    heatmap: np.ndarray | None = None  # [k, j, i] float32 in [0, 1] on ``reference``'s grid
    heatmap_class: int | None = None
    findings: list[Finding] = field(default_factory=list)


@dataclass
class ClassificationResult:
    """Everything a classification run produced, ready for the scene, a CSV or a report."""

    model_name: str
    task: str
    class_names: list[str]
    cases: list[CaseResult]
    thresholds: list[float]
    unit: str = ""
    method: str | None = None
    device: str = "cpu"
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def method_title(self) -> str:
        return METHOD_TITLES.get(self.method or "", "")

    def predicted_names(self, case: CaseResult) -> list[str]:
        return [self.class_names[i] for i in case.predicted]

    def ranking(self, case: CaseResult) -> list[tuple[str, float, bool]]:
        """(class, score, predicted) sorted by score, highest first."""
        order = np.argsort(-case.scores, kind="stable")
        return [(self.class_names[i], float(case.scores[i]), int(i) in case.predicted) for i in order]

    def rows(self) -> list[dict]:
        """One row per case: name, predicted class(es), then each class's score."""
        rows = []
        for case in self.cases:
            row = {"image": case.name, "predicted": ";".join(self.predicted_names(case))}
            for name, score in zip(self.class_names, case.scores):
                row[f"{name} ({self.unit})" if self.unit else name] = float(score)
            rows.append(row)
        return rows

    @property
    def findings(self) -> list[Finding]:
        return [f for c in self.cases for f in c.findings]


# --- inputs, regions -------------------------------------------------------------------------


def group_cases(volumes: list[Volume], channels: int, model_name: str) -> list[list[Volume]]:
    """Several volumes are one case's channels when they add up to ``channels``, else one case each (a cohort)."""
    if not volumes:
        raise GeometryError("no input volume given; select at least one volume")
    total = sum(v.num_components for v in volumes)
    if len(volumes) > 1 and total == channels:
        return [list(volumes)]
    if all(v.num_components == channels or (v.num_components == 1 and channels == 3) for v in volumes):
        return [[v] for v in volumes]
    raise GeometryError(
        f"model {model_name} expects {channels} input channel(s); the input(s) {', '.join(f'{v.name} ({v.num_components})' for v in volumes)} "
        "have neither that many each nor in total; select matching inputs"
    )


def region_on_grid(region: Volume, ref: Volume) -> np.ndarray:
    """The region mask ([k, j, i] bool) on ``ref``'s grid; errors name the region when it is empty or outside."""
    if not np.any(region.array):
        raise GeometryError(f"region {region.name} is empty; draw it (or choose another) before classifying a region")
    mask = region.array if same_grid(region, ref) else resample_volume_to(
        Volume((region.array > 0).astype(np.uint8), region.ijk_to_ras, region.name), ref, linear=False).array
    mask = np.asarray(mask) > 0
    if mask.ndim == 4:
        mask = mask.any(axis=3)
    if not mask.any():
        raise GeometryError(f"region {region.name} lies outside volume {ref.name}; choose a region that overlaps the image")
    return mask


def _crop_box(mask_kji: np.ndarray, margin: float) -> tuple[slice, slice, slice]:
    """(I, J, K) slices around the mask, grown by ``margin`` of its size on each side (at least 2 voxels; none for 0)."""
    box = bounding_box(mask_kji)
    assert box is not None
    out = []
    for sl, n in zip(reversed(box), reversed(mask_kji.shape)):  # k, j, i -> i, j, k
        size = sl.stop - sl.start
        grow = 0 if n == 1 or margin <= 0 else max(2, int(round(size * margin)))
        out.append(slice(max(0, sl.start - grow), min(n, sl.stop + grow)))
    return tuple(out)  # type: ignore[return-value]


def _flat_axis(shape: tuple[int, int, int], name: str, model_name: str) -> int:
    """The single-slice axis of a volume given to a 2D model (K preferred)."""
    for axis in (2, 1, 0):
        if shape[axis] == 1:
            return axis
    raise GeometryError(f"model {model_name} is 2D; {name} has {shape[2]} slices ({shape}); give a single-slice image (e.g. a radiograph) or extract one slice")


# --- one case --------------------------------------------------------------------------------


@dataclass
class _Prepared:
    x: torch.Tensor  # (1, C, *S) network input on the device
    back: Callable[[np.ndarray], np.ndarray]  # heatmap on S -> heatmap (I, J, K) on the crop grid


def _prepare_card(model: LoadedModel, spec: OutputSpec, x: torch.Tensor, affine: np.ndarray, has_region: bool, name: str) -> _Prepared:
    stage = model.card.stages[-1]
    undo = lambda a: a  # noqa: E731
    if spec.spatial_dims == 3 and stage.orientation == "RAS":
        x, affine, undo = reorient_to_ras(x, affine)
    crop_shape = tuple(x.shape[1:])
    flat = None
    if spec.spatial_dims == 2:
        flat = _flat_axis(crop_shape, name, model.name)
        x = x.select(flat + 1, 0)
    size = tuple(x.shape[1:])
    if stage.mode == "sliding_window":
        raise ModelCardError(f"{model.name}: classification models run on the whole image; use inference mode 'resize' (or 'whole')")
    roi = tuple(stage.roi_size) if stage.roi_size else None
    if roi is not None and len(roi) != spec.spatial_dims:
        raise ModelCardError(f"{model.name}: inference.roi_size {list(roi)} does not match the network's {spec.spatial_dims}D input")
    if stage.mode == "resize" or (stage.mode == "whole" and has_region and roi is not None):
        mode = stage.resize_mode if spec.spatial_dims == 3 or not stage.resize_mode == "trilinear" else "bilinear"
        x = F.interpolate(x[None].float(), size=roi, mode=mode)[0]
    elif roi is not None and size != roi:
        raise GeometryError(
            f"model {model.name} needs an input of exactly {'x'.join(map(str, roi))} voxels (mode 'whole'); {name} is "
            f"{'x'.join(map(str, size))}; resample the image to that size, or use a card with inference mode 'resize'"
        )
    x = apply_intensity(x.float(), stage.intensity, {})

    def back(heat: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
        if tuple(t.shape[2:]) != size:
            t = F.interpolate(t, size=size, mode="bilinear" if spec.spatial_dims == 2 else "trilinear", align_corners=False)
        out = t[0]
        if flat is not None:
            out = out.unsqueeze(flat + 1)
        return np.asarray(undo(out.numpy()))[0]

    return _Prepared(x[None].to(model.device), back)


def _prepare_bundle(model: LoadedModel, spec: OutputSpec, x: torch.Tensor, affine: np.ndarray, name: str) -> _Prepared:
    from monai.data import MetaTensor

    parts = model.bundle
    crop_shape = tuple(x.shape[1:])
    flat = None
    guidance = None
    sources = [getattr(t, "source", None) for t in getattr(parts.preprocessing, "transforms", ())]
    source = next((s for s in sources if isinstance(s, str) and s != parts.image_key), None)
    if source is not None:  # e.g. nuclick's AddLabelAsGuidanced: the last input channel is the guidance mask
        x, guidance = x[:-1], x[-1:]
    if spec.spatial_dims == 2:
        flat = _flat_axis(crop_shape, name, model.name)
        x = x.select(flat + 1, 0)
        guidance = guidance.select(flat + 1, 0) if guidance is not None else None
    size = tuple(x.shape[1:])
    meta = {"filename_or_obj": name, "original_channel_dim": 0, "spatial_shape": np.asarray(size)}
    # 3D: the bundle's spatial transforms (Spacingd, Orientationd) see the real grid; a 2D slice keeps MONAI's
    # default in-plane affine (the zoo's 2D bundles only resize). The heatmap is mapped back by resizing.
    data = {parts.image_key: MetaTensor(x.contiguous(), affine=torch.as_tensor(affine) if flat is None else None, meta=dict(meta))}
    if guidance is not None:
        data[source] = MetaTensor(guidance.contiguous(), meta=dict(meta))
    if parts.preprocessing is not None:
        data = parts.preprocessing(data)
    img = torch.as_tensor(data[parts.image_key]).float()

    def back(heat: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
        if tuple(t.shape[2:]) != size:
            t = F.interpolate(t, size=size, mode="bilinear" if len(size) == 2 else "trilinear", align_corners=False)
        out = t[0]
        if flat is not None:
            out = out.unsqueeze(flat + 1)
        return out.numpy()[0]

    return _Prepared(img[None].to(model.device), back)


def _case_input(model: LoadedModel, spec: OutputSpec, volumes: list[Volume]) -> torch.Tensor:
    given = sum(v.num_components for v in volumes)
    if given == 1 and spec.channels == 3 and model.kind == "bundle" and len(model.card.inputs) == 1:
        log.info("replicating the grey image %s into the 3 channels model %s takes", volumes[0].name, model.name)
        return stack_inputs(volumes, 1, model.name).expand(3, -1, -1, -1)
    return stack_inputs(volumes, spec.channels, model.name)


def _resolve_target(target: int | str | None, spec: OutputSpec, model_name: str) -> int | None:
    if target is None:
        return None
    if isinstance(target, str) and not target.isdigit():
        if target not in spec.names:
            raise ValueError(f"class {target!r} is not a class of model {model_name} ({', '.join(spec.names)})")
        return spec.names.index(target)
    index = int(target)
    if not 0 <= index < len(spec.names):
        raise ValueError(f"class index {index} out of range for model {model_name} ({len(spec.names)} classes: {', '.join(spec.names)})")
    return index


def _predicted(spec: OutputSpec, scores: np.ndarray) -> list[int]:
    if spec.task == "regression":
        return []
    if spec.task == "multilabel" or len(scores) == 1:  # one sigmoid output: present when above its threshold
        return [i for i, (s, t) in enumerate(zip(scores, spec.thresholds)) if s >= t]
    return [int(np.argmax(scores))]


def region_margin(model: LoadedModel, margin: float | None = None) -> float:
    """The crop margin around a region: ``margin`` when given, else the card's ``inference.region_margin`` (default 0.1).

    Patch classifiers (trained on fixed-size patches, e.g. mni-tissue-patch-resnet) set 0 in their
    card: the region's box is then the network's whole field of view, as in training.
    """
    if margin is None:
        margin = model.card.stages[-1].region_margin if model.card.stages else Stage.region_margin
    try:
        value = float(margin)
    except (TypeError, ValueError):
        value = -1.0
    if not 0.0 <= value <= 10.0:
        raise ModelCardError(f"model {model.name}: region margin {margin!r} is not a fraction of the region's size between 0 and 10; "
                             "fix inference.region_margin in its card (e.g. 0.1, or 0 for patch classifiers)")
    return value


def _scores(model: LoadedModel, spec: OutputSpec, net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """The network's raw output for one case and its class scores (one sigmoid output of a two-class card: [1 - p, p])."""
    with torch.no_grad(), autocast(model.device, model.amp):
        logits = call_network(net, x).float()
    if logits.ndim != 2 or logits.shape[1] not in (len(spec.names), 1 if len(spec.names) == 2 else -1):
        raise ModelCardError(f"{model.name}: network output has shape {tuple(logits.shape)}; expected (1, {len(spec.names)}) for classes {', '.join(spec.names)}")
    scores = apply_activation(logits, spec.activation)[0].cpu().numpy().astype(np.float64)
    if len(scores) == 1 and len(spec.names) == 2:
        scores = np.array([1.0 - scores[0], scores[0]])
    return logits, scores


def classify(model: LoadedModel, volumes: list[Volume], region: Volume | None = None, request: ClassifyRequest | None = None,
             callback: ProgressCallback | None = None, cancel: CancelToken | None = None, **options) -> ClassificationResult:
    """Classify ``volumes`` (one case, or a cohort of one case per volume) with a loaded model.

    ``region`` (a mask volume on any grid) restricts each case to the region's box grown by
    ``margin`` (default: the card's, see :func:`region_margin`); its connected components are
    listed as findings. With ``explain`` the heatmap of ``target_class`` (default: the predicted
    class) is put on each case's input grid and its hot spots become findings. ``cancel`` (or a
    cancel from ``callback``) raises ``Cancelled`` between stages and cases, around the
    explanation and between occlusion batches. Nothing is written anywhere; errors are raised before any output.
    The options are a :class:`~medai.requests.ClassifyRequest` (or its fields as keywords, when none is given).
    """
    request = request if request is not None else request_from(ClassifyRequest, options)
    explain, target_class, method = request.explain, request.target_class, request.method
    margin, hotspot_threshold = request.margin, request.hotspot_threshold
    if method not in METHODS:
        raise ValueError(f"explanation method {method!r} unknown; use one of {', '.join(METHODS)}")
    spec = output_spec(model)
    margin = region_margin(model, margin)
    target = _resolve_target(target_class, spec, model.name)
    cases = group_cases(volumes, spec.channels, model.name)
    masks = [region_on_grid(region, case[0]) if region is not None else None for case in cases]  # validate all first
    doubts = [w for case in cases for w in input_warnings(case, model.card.inputs if model.kind != "bundle" else None, model.name,
                                                           spec.spatial_dims if model.kind != "bundle" else None)]
    progress = Progress(callback, cancel)
    result = ClassificationResult(model.name, spec.task, spec.names, [], spec.thresholds, spec.unit,
                                  method if explain else None, str(model.device), warnings=list(model.notes) + doubts)
    weight = 1.0 / len(cases)
    where = f"model {model.name} on {cases[0][0].name}" + (f" and {len(cases) - 1} more case(s)" if len(cases) > 1 else "")
    with model.lock, way_out_when_out_of_memory(where, model.device):  # networks are not re-entrant on one device
        for case_volumes, mask in zip(cases, masks):
            ref = case_volumes[0]
            with progress.stage(f"{ref.name}: preprocess", 0.1 * weight):
                x = _case_input(model, spec, case_volumes)
                box = _crop_box(mask, margin) if mask is not None else tuple(slice(0, n) for n in x.shape[1:])
                x = x[(slice(None), *box)]
                affine = crop_affine(ref.ijk_to_ras, [b.start for b in box])  # the crop box's IJK-to-RAS (box is in I, J, K order)
                prep = (_prepare_bundle(model, spec, x, affine, ref.name) if model.kind == "bundle"
                        else _prepare_card(model, spec, x, affine, mask is not None, ref.name))
            with progress.stage(f"{ref.name}: inference", (0.3 if explain else 0.8) * weight):
                net = model.networks[-1]
                logits, scores = _scores(model, spec, net, prep.x)
            case = CaseResult(ref.name, ref, scores, _predicted(spec, scores))
            result.cases.append(case)
            if explain:
                with progress.stage(f"{ref.name}: explain ({METHOD_TITLES[method]})", 0.5 * weight):
                    cls = target if target is not None else (int(np.argmax(scores)) if spec.task != "regression" else 0)
                    progress.cancel.check()  # a cancel from the progress callback at this stage's start stops here
                    try:
                        heat = explain_heatmap(net, prep.x, cls, method, lambda t: apply_activation(t, spec.activation), spec.layer,
                                               step=progress.update,  # occlusion: progress + cancel check per batch
                                               one_output=logits.shape[1] == 1 and len(spec.names) == 2)
                    except ExplainUnavailable as exc:
                        note = f"{model.name}: no heatmap: {exc}"
                        if note not in result.warnings:
                            result.warnings.append(note)
                        heat = None
                    progress.cancel.check()
                    if heat is not None:
                        full = np.zeros(ref.shape_ijk, dtype=np.float32)
                        full[box] = prep.back(heat)
                        case.heatmap, case.heatmap_class = array_from_ijk(full), cls
                        if mask is None:  # a whole image: a flat or everywhere-hot heatmap localises nothing
                            result.warnings += heatmap_warnings(full, ref.name)
            with progress.stage(f"{ref.name}: localize", 0.1 * weight):
                # the heatmap is zero outside the crop box, and the box holds the whole region: search the box only
                # (same findings, in RAS through the box's affine; seconds faster on a whole-head volume)
                box_kji = tuple(reversed(box))
                heat_box = case.heatmap[box_kji] if case.heatmap is not None else None
                if heat_box is not None:
                    case.findings += (hot_spots(heat_box, affine, ref.name, hotspot_threshold) if hotspot_threshold > 0
                                      else hot_spots(case.heatmap, ref.ijk_to_ras, ref.name, hotspot_threshold))
                if mask is not None and region is not None and region.metadata.get("kind", "segment") == "segment":
                    case.findings += region_components(mask[box_kji], heat_box, affine, ref.name, region.name)
    progress.done()
    result.timings = dict(progress.timings)
    return result
