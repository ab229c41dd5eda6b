"""Segmentation engine: volumes + loaded model -> labelmap layers on the first volume's exact grid.

Two paths share input stacking, progress, cancellation and the output contract:

* model cards (checkpoint or TorchScript, single network or a localise-then-segment cascade);
* MONAI Bundles, run in memory through their own preprocessing / inferer / postprocessing
  (LoadImage and SaveImage removed), as MONAI Label does.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import input_warnings, plausibility_warnings
from ..geometry import GeometryError, Volume, array_from_ijk, reorient_to_ras
from ..geometry import crop_affine as geometry_crop_affine
from ..models.card import ModelCard, Stage
from ..models.loader import LoadedModel
from ..resample import grid_with_spacing, resample_channels
from ..results import Label, SegmentationResult
from .bundle_inputs import bundle_input_data
from .bundle_stream import compose_like, faster_step, is_plain_softmax, run_inferer
from .common import activation as _activation
from .common import inference, set_cpu_threads, softmax_, stack_inputs
from .cpu_memory import call_network
from .intensity import apply_intensity
from .out_of_memory import try_in_turn, way_out_when_out_of_memory
from .postprocess import bounding_box, largest_component, postprocess_labelmap
from .progress import CancelToken, Progress, ProgressCallback
from .window_batch import auto_batch

log = logging.getLogger(__name__)

# Above this many output elements, sliding-window stitching happens on the CPU.
GPU_STITCH_LIMIT = 2**28


def require_3d(volumes: list[Volume], model_name: str) -> None:
    """A 3D network cannot segment a single slice: say so instead of padding it into nonsense."""
    for v in volumes:
        if min(v.shape_ijk) < 2:
            raise GeometryError(
                f"model {model_name} needs a 3D volume, but {v.name} has a single slice (dimensions {v.shape_ijk}); "
                "load the whole series, or use a 2D model"
            )


def _count_windows(shape: tuple[int, ...], roi: list[int], overlap: float, batch: int) -> int:
    n = 1
    for size, r in zip(shape, roi):
        r = min(r, size)
        interval = max(int(r * (1 - overlap)), 1)
        n *= 1 if size <= r else math.ceil((size - r) / interval) + 1
    return math.ceil(n / batch)


class _Predictor:
    """Wraps a network for sliding windows: cancellation and progress between windows."""

    def __init__(self, net: torch.nn.Module, progress: Progress, total: int) -> None:
        self.net, self.progress, self.total, self.done = net, progress, max(total, 1), 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.progress.cancel.check()
        out = call_network(self.net, x)
        self.done += 1
        self.progress.update(self.done / self.total)
        return out


def _run_network(stage: Stage, net: torch.nn.Module, x: torch.Tensor, affine: np.ndarray, device: torch.device,
                 stats: dict, progress: Progress) -> tuple[torch.Tensor, np.ndarray]:
    """Run one stage on ``x`` (C, I, J, K) float32 in the working orientation.

    Returns activated network output ``(N, I', J', K')`` and the affine of that output grid.
    """
    if stage.mode == "resize":
        size = tuple(stage.roi_size)
        inp = F.interpolate(x[None], size=size, mode=stage.resize_mode)[0]
        scale = np.array([s / t for s, t in zip(x.shape[1:], size)])
        out_affine = affine.copy()
        out_affine[:3, :3] = affine[:3, :3] * scale
        out_affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ ((scale - 1) / 2)
        inp = apply_intensity(inp, stage.intensity, stats)
        progress.update(0.05)
        with inference(device, stage.amp):
            out = call_network(net, inp[None].to(device)).float()
        progress.update(1.0)
        return _activate(out, stage.activation)[0], out_affine
    if stage.mode == "whole":
        inp = apply_intensity(x, stage.intensity, stats)
        with inference(device, stage.amp):
            out = call_network(net, inp[None].to(device)).float()
        progress.update(1.0)
        return _activate(out, stage.activation)[0], affine
    # sliding window, optionally at the card's voxel spacing
    from monai.inferers import sliding_window_inference

    work_affine = affine
    if stage.spacing:
        shape, work_affine = grid_with_spacing(tuple(x.shape[1:]), affine, stage.spacing)
        x = torch.from_numpy(resample_channels(x.numpy(), affine, shape, work_affine, linear=True))
    x = apply_intensity(x, stage.intensity, stats)
    roi = stage.roi_size
    windows = _count_windows(tuple(x.shape[1:]), roi, stage.overlap, 1)
    batch = stage.sw_batch_size
    if batch == "auto":  # the card asks for as many windows per call as fit in free memory (window_batch.py)
        with inference(device, stage.amp):
            batch = auto_batch(net, x.shape[0], roi, device, windows)
    cpu = torch.device("cpu")
    stitch = cpu if x[0].numel() * 8 > GPU_STITCH_LIMIT else device  # room for several output channels

    def run(batch: int, stitch: torch.device):
        predictor = _Predictor(net, progress, math.ceil(windows / batch))
        with inference(device, stage.amp):
            return sliding_window_inference(x[None], roi_size=roi, sw_batch_size=batch, predictor=predictor,
                                            overlap=stage.overlap, mode="gaussian", sw_device=device, device=stitch)

    attempts = [(f"{batch} window(s) per call, stitched on {stitch}", lambda: run(batch, stitch))]
    if batch > 1 or stitch != cpu:
        attempts.append(("1 window per call, stitched on cpu", lambda: run(1, cpu)))
    out = try_in_turn(attempts, f"stage {stage.name!r} on {tuple(x.shape[1:])} voxels")
    return _activate(torch.as_tensor(out).float(), stage.activation)[0], work_affine


def _activate(out: torch.Tensor, name: str) -> torch.Tensor:
    """The card's activation over the class axis of a fresh ``(1, N, ...)`` network output; softmax in place."""
    with torch.inference_mode():
        return softmax_(out, 1) if name == "softmax" else _activation(out, name)


def _back_to_grid(out: torch.Tensor, out_affine: np.ndarray, stage: Stage, shape: tuple[int, int, int],
                  affine: np.ndarray) -> torch.Tensor:
    """Bring a stage output onto the (cropped) working grid ``(shape, affine)``."""
    if tuple(out.shape[1:]) == tuple(shape) and np.allclose(out_affine, affine, atol=1e-5):
        return out
    if stage.mode == "resize":
        mode = stage.resize_mode if stage.resize_mode.startswith("nearest") else "trilinear"
        return F.interpolate(out[None].cpu(), size=tuple(shape), mode=mode)[0]
    return torch.from_numpy(resample_channels(out.cpu().numpy(), out_affine, shape, affine, linear=True))


def _localize(out: torch.Tensor, stage: Stage, crop_shape: tuple[int, ...], min_fraction: float = 0.02) -> tuple[slice, ...]:
    """Box (in crop index space) around the localiser's foreground, grown by ``stage.crop_margin``.

    Computed on the network's own output grid and scaled, as deepbet does.
    """
    channel = stage.output_channel if stage.output_channel is not None else out.shape[0] - 1
    mask = (out[channel] > stage.threshold).cpu().numpy()
    if stage.largest_component:
        mask = largest_component(mask)
    box = bounding_box(mask.astype(np.float32), min_fraction=min_fraction)
    if box is None:
        raise GeometryError(
            f"localiser stage {stage.name!r} found nothing to segment in this image; check that the input is the modality the model expects"
        )
    scale = np.array(crop_shape, dtype=np.float64) / np.array(mask.shape)
    result = []
    for sl, s, n in zip(box, scale, crop_shape):
        center = (sl.start + sl.stop) / 2 * s
        size = (sl.stop - sl.start) * s * (1 + 2 * stage.crop_margin)
        center, size = round(center), round(size)
        result.append(slice(max(0, int(center - size / 2)), min(n, int(center + size / 2))))
    return tuple(result)


def _discretize_on_grid(out: torch.Tensor, out_affine: np.ndarray, stage: Stage, shape: tuple[int, int, int],
                        affine: np.ndarray, card: ModelCard) -> list[np.ndarray]:
    """Network output -> labelmap layers on the (cropped) working grid, one channel at a time.

    Each channel is brought onto the working grid and discretised before the next one, so memory
    holds two full-resolution channels, not all of them. The labels are those of resampling every
    channel and then thresholding or taking the first maximum (``torch.argmax``).
    """
    out = out.cpu()

    def channel(c: int) -> torch.Tensor:
        return _back_to_grid(out[c:c + 1], out_affine, stage, shape, affine)[0]

    n = out.shape[0]
    if card.discretize == "threshold":
        thr = card.threshold
        return [(channel(c) > thr).numpy().astype(np.uint8) for c in range(n)]
    if n == 1:
        return [(channel(0) > 0.5).numpy().astype(np.uint8)]
    return [running_argmax((channel(c) for c in range(n)), shape, n)]


def running_argmax(channels, shape: tuple[int, ...], n: int) -> np.ndarray:
    """``argmax`` over ``n`` channels given one at a time (first maximum wins, as ``torch.argmax``; NaN never wins)."""
    labels = torch.zeros(shape, dtype=torch.uint8 if n < 256 else torch.int16)
    best = None
    for c, values in enumerate(channels):
        values = torch.as_tensor(values)
        if best is None:
            best = values.clone()
            continue
        better = values > best
        labels[better] = c
        torch.maximum(best, values, out=best)
    return labels.numpy() if n < 256 else labels.numpy().astype(np.uint16)


def segment_with_card(model: LoadedModel, volumes: list[Volume], progress: Progress) -> SegmentationResult:
    card = model.card
    ref = volumes[0]
    set_cpu_threads()
    with progress.stage("preprocess", 0.1):
        if any(st.roi_size and len(st.roi_size) == 3 for st in card.stages):
            require_3d(volumes, card.name)
        x = stack_inputs(volumes, card.num_inputs, card.name)
        reorient = card.stages[0].orientation == "RAS"
        if reorient:
            x, affine, undo = reorient_to_ras(x, ref.ijk_to_ras)
        else:
            affine, undo = ref.ijk_to_ras, (lambda a: a)
        x = x.contiguous()
    full_shape = tuple(x.shape[1:])
    box: tuple[slice, ...] = tuple(slice(0, n) for n in full_shape)
    stats: dict = {}
    weight = 0.8 / len(card.stages)
    layers_crop: list[np.ndarray] | None = None
    for stage, net in zip(card.stages, model.networks):
        with progress.stage(f"inference ({stage.name})" if len(card.stages) > 1 else "inference", weight):
            crop = x[(slice(None), *box)]
            crop_affine = geometry_crop_affine(affine, [b.start for b in box])
            out, out_affine = _run_network(stage, net, crop, crop_affine, model.device, stats, progress)
            if stage.role == "localize":
                local = _localize(out.cpu(), stage, tuple(crop.shape[1:]))
                box = tuple(slice(b.start + l.start, b.start + l.stop) for b, l in zip(box, local))
                continue
            layers_crop = _discretize_on_grid(out, out_affine, stage, tuple(crop.shape[1:]), crop_affine, card)
            del out
    if layers_crop is None:
        raise ValueError(f"model {card.name}: no stage segments (every stage is a localiser); check the card's stages")
    with progress.stage("postprocess", 0.1):
        layers = []
        values = [lab.value for lab in card.labels]
        for layer in layers_crop:
            full = np.zeros(full_shape, dtype=layer.dtype)
            full[box] = layer
            full = postprocess_labelmap(full, values if len(layers_crop) == 1 else [1],
                                        bool(card.postprocessing.get("largest_component")),
                                        bool(card.postprocessing.get("fill_holes")))
            back = undo(full[None])[0]
            layers.append(array_from_ijk(back))
    labels = card.labels
    if card.discretize == "threshold":  # one layer per label, value 1
        labels = [Label(1, lab.name, lab.color, n, lab.terminology) for n, lab in enumerate(card.labels)]
    return SegmentationResult(ref, layers, labels, card.name, str(model.device), dict(progress.timings))


def _to_reference_grid(pred: torch.Tensor, ref: Volume) -> np.ndarray:
    """A bundle's output ``(C, I, J, K)`` as ``[c, k, j, i]`` on the reference grid (resampled by affine if needed)."""
    arr = pred.detach().cpu()
    affine = np.asarray(getattr(pred, "affine", torch.as_tensor(ref.ijk_to_ras)), dtype=np.float64)
    if tuple(arr.shape[1:]) != ref.shape_ijk or not np.allclose(affine, ref.ijk_to_ras, atol=1e-4):
        log.info("bundle output is not on the input grid; resampling it by its affine")
        arr = torch.from_numpy(resample_channels(arr.float().numpy(), affine, ref.shape_ijk, ref.ijk_to_ras, linear=False))
    return arr.numpy().transpose(0, 3, 2, 1)


def run_postprocessing(post, data: dict, key: str = "pred") -> dict:
    """A bundle's postprocessing Compose on ``data``; a leading softmax ``Activationsd`` runs in place and a plain
    argmax ``AsDiscreted`` through ``torch.max`` (:func:`.bundle_stream.faster_step`).

    Same values as the bundle's own transforms (same torch kernel for the softmax, the same labels for the argmax),
    but the network-grid output of all classes is not held twice (softmax, then ``AsDiscreted``/``Invertd`` on its copy).
    """
    from monai.transforms import Compose

    steps = list(getattr(post, "transforms", []) or [])
    if type(post) is not Compose or not steps:
        return post(data)
    pred = data.get(key)
    if is_plain_softmax(steps[0], key) and isinstance(pred, torch.Tensor) and pred.dtype == torch.float32:
        softmax_(pred.as_tensor() if hasattr(pred, "as_tensor") else pred, 0)
        steps = steps[1:]
    steps = [faster_step(step) for step in steps]
    if len(steps) == len(post.transforms) and all(a is b for a, b in zip(steps, post.transforms)):
        return post(data)
    return compose_like(post, steps)(data)


def segment_with_bundle(model: LoadedModel, volumes: list[Volume], progress: Progress) -> SegmentationResult:
    from monai.data import MetaTensor

    parts = model.bundle
    ref = volumes[0]
    set_cpu_threads()
    with progress.stage("preprocess", 0.15):
        roi = getattr(parts.inferer, "roi_size", None)
        if roi is not None and len(roi) == 3:
            require_3d(volumes, model.card.name)
        data = bundle_input_data(model, volumes)  # under the bundle's own keys (several for renalStructures_CECT)
        data = parts.preprocessing(data) if parts.preprocessing else data
    net = model.networks[0]
    with progress.stage("inference", 0.7):
        img = data[parts.image_key]
        roi = getattr(parts.inferer, "roi_size", None)
        total = _count_windows(tuple(img.shape[1:]), list(roi), getattr(parts.inferer, "overlap", 0.25), getattr(parts.inferer, "sw_batch_size", 1)) if roi else 1
        predictor = _Predictor(net, progress, total)
        with inference(model.device, model.amp):  # leading per-voxel postprocessing steps may run here, slab by slab
            pred, post = run_inferer(parts.inferer, parts.postprocessing, img[None].to(model.device), predictor)
        data["pred"] = MetaTensor(pred, affine=img.affine, meta=dict(img.meta))
        del pred, img  # the bundle's postprocessing may then free the network-grid output as it goes
    with progress.stage("postprocess", 0.15):
        if post is not None:
            with torch.inference_mode():
                data = run_postprocessing(post, data)
        out = _to_reference_grid(data.pop("pred"), ref)
        labels = list(model.card.labels)
        if out.shape[0] == 1:
            layers = [np.rint(out[0]).astype(np.uint16 if out.max() > 255 else np.uint8)]
            present = sorted(int(v) for v in np.unique(layers[0]) if v > 0)
            known = {lab.value for lab in labels}
            labels += [Label(v, f"label {v}", Label.default_color(v)) for v in present if v not in known]
        elif np.isin(out, (0, 1)).all():  # multi-label binary channels
            layers = [out[c].astype(np.uint8) for c in range(out.shape[0])]
            names = labels if len(labels) == out.shape[0] else [Label(c + 1, f"channel {c}", Label.default_color(c + 1)) for c in range(out.shape[0])]
            labels = [Label(1, lab.name, lab.color, n, lab.terminology) for n, lab in enumerate(names)]
        else:  # probabilities left undiscretised by the bundle
            layers = [np.argmax(out, axis=0).astype(np.uint8 if out.shape[0] < 256 else np.uint16)]
    return SegmentationResult(ref, layers, labels, model.card.name, str(model.device), dict(progress.timings))


def segment(model: LoadedModel, volumes: list[Volume], callback: ProgressCallback | None = None,
            cancel: CancelToken | None = None) -> SegmentationResult:
    """Segment ``volumes`` (first one defines the output grid) with a loaded model."""
    if model.card.task not in ("segmentation", "multilabel") and model.kind != "bundle":
        raise ValueError(f"model {model.name} is a {model.card.task} model; use it with MedAIClassify / `medai classify`")
    dims = 3 if any(st.roi_size and len(st.roi_size) == 3 for st in model.card.stages) else None
    doubts = input_warnings(volumes, model.card.inputs, model.name, dims)  # refuses unusable inputs before any work
    progress = Progress(callback, cancel)
    # networks are not re-entrant on one device: one run at a time
    with model.lock, way_out_when_out_of_memory(f"model {model.name} on {volumes[0].name}", model.device):
        if model.format is not None:
            result = model.format.segment(model, volumes, progress)
        else:  # a LoadedModel built by hand (tests, training) is a card model
            result = segment_with_card(model, volumes, progress)
    progress.done()
    result.warnings = list(model.notes) + doubts + result_warnings(result, model)
    for warning in result.warnings:
        log.warning(warning)
    return result


def result_warnings(result: SegmentationResult, model: LoadedModel) -> list[str]:
    """The card's plausibility ranges (``expected.volume_ml``) checked against the result."""
    if len(result.layers) != 1:
        return []
    counts = np.bincount(result.layers[0].ravel())  # uint8/uint16 labels: no int64 copy
    volumes = {lab.value: (lab.name, float(counts[lab.value] if lab.value < len(counts) else 0) * result.reference.voxel_volume_ml)
               for lab in result.labels}
    return plausibility_warnings(model.card.expected_volume_ml, volumes, model.name)
