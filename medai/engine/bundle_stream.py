"""A bundle's per-voxel postprocessing steps run on finished slabs of its sliding window.

When the inferer is a plain ``SlidingWindowInferer`` and the postprocessing starts with per-voxel
steps on ``pred`` (``Activationsd(softmax=True)``, ``AsDiscreted`` argmax/threshold/rounding over the
channel axis), those steps run on each finished slab of the stitched output (:mod:`.streaming`), so
the network-grid probabilities of all classes are never held for the whole image; the rest of the
chain (``Invertd``, ...) runs as the bundle defines it on the reduced tensor. The values are those of
the bundle's own chain: same stitching arithmetic, the whole-volume softmax bits
(:mod:`.slab_softmax`), and argmax/threshold are per voxel.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch

from .out_of_memory import try_in_turn
from .slab_softmax import slab_softmax_exact, softmax_slab
from .streaming import NotStreamable, stream_sliding_window

log = logging.getLogger(__name__)


@dataclass
class StreamPlan:
    steps: list  # the leading per-voxel steps, run slab by slab
    rest: object | None  # the remaining Compose, run on the reduced tensor (None: nothing left)


class _NotExactHere(RuntimeError):
    """The slab-wise softmax model does not hold on this machine: use the whole-volume path."""


def is_plain_softmax(step, key: str = "pred") -> bool:
    """Whether ``step`` is ``Activationsd(keys=key, softmax=True)`` over the channel axis and nothing else."""
    from monai.transforms import Activationsd

    return (type(step) is Activationsd and list(step.keys) == [key] and tuple(step.softmax) == (True,)
            and tuple(step.sigmoid) == (False,) and tuple(step.other) == (None,)
            and not step.converter.sigmoid and step.converter.other is None
            and step.converter.kwargs.get("dim", 0) == 0)


def _per_voxel_discrete(step, key: str) -> bool:
    """``AsDiscreted`` on ``key`` alone whose argmax/one-hot act on the channel axis (keeping it)."""
    from monai.transforms import AsDiscreted

    kw = step.converter.kwargs if type(step) is AsDiscreted else {}
    return (type(step) is AsDiscreted and list(step.keys) == [key] and kw.get("dim", 0) == 0
            and kw.get("keepdim", True) is True)


def is_plain_argmax(step) -> bool:
    """Whether ``step`` is an ``AsDiscreted`` that only takes the argmax (no one-hot, threshold or rounding)."""
    from monai.transforms import AsDiscrete, AsDiscreted

    return (type(step) is AsDiscreted and type(step.converter) is AsDiscrete and all(step.argmax)
            and all(v is None for v in (*step.to_onehot, *step.threshold, *step.rounding)))


class ArgmaxByMax:
    """A plain argmax ``AsDiscreted`` computed as ``torch.max(dim).indices``: the same labels (first maximum; NaN wins
    as in ``torch.argmax``) and output (``dtype``, metadata); ``torch.argmax`` over the channel axis is up to 12x
    slower on the CPU for two channels (pytorch/pytorch#140000)."""

    def __init__(self, step) -> None:
        self.step = step

    def __call__(self, data: dict) -> dict:
        from monai.data.meta_obj import get_track_meta
        from monai.utils import convert_data_type, convert_to_dst_type, convert_to_tensor

        d, kwargs = dict(data), self.step.converter.kwargs
        for key in self.step.key_iterator(d):
            img = convert_to_tensor(d[key], track_meta=get_track_meta())  # as AsDiscrete.__call__ does
            img_t, *_ = convert_data_type(img, torch.Tensor)
            labels = torch.max(img_t, dim=kwargs.get("dim", 0), keepdim=kwargs.get("keepdim", True)).indices
            d[key], *_ = convert_to_dst_type(labels, img, dtype=kwargs.get("dtype", torch.float))
        return d


def faster_step(step):
    """``step``, or the same labels computed faster: a plain argmax ``AsDiscreted`` becomes :class:`ArgmaxByMax`."""
    return ArgmaxByMax(step) if is_plain_argmax(step) else step


def compose_like(post, steps: list):
    """A ``Compose`` of ``steps`` with the options of the bundle's own ``post``."""
    from monai.transforms import Compose

    return Compose(steps, map_items=post.map_items, unpack_items=post.unpack_items, log_stats=post.log_stats)


def rest_of(post, n: int):
    """``post`` without its first ``n`` steps (same Compose options); None when nothing is left."""
    steps = list(post.transforms)[n:]
    return compose_like(post, steps) if steps else None


def plan_streaming(inferer, post, key: str = "pred") -> StreamPlan | None:
    """The slab-wise plan for this inferer and postprocessing, or None when the whole-volume path applies."""
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import Compose

    if type(inferer) is not SlidingWindowInferer or type(post) is not Compose:
        return None
    if getattr(inferer, "with_coord", False) or getattr(inferer, "buffer_steps", None):
        return None
    steps = []
    for step in post.transforms:
        if not (is_plain_softmax(step, key) or _per_voxel_discrete(step, key)):
            break
        steps.append(step)
    if not steps:
        return None
    return StreamPlan(steps, rest_of(post, len(steps)))


def _reducer(steps: list, spatial: tuple[int, ...], key: str):
    total, plane = math.prod(spatial), math.prod(spatial[1:])
    steps = [faster_step(step) for step in steps]  # the same labels as the whole-volume path's steps
    checked: list[bool] = []

    def reduce(chunk: torch.Tensor, start: int) -> torch.Tensor:
        x = chunk.float().cpu()  # where the whole-volume path runs the postprocessing
        for step in steps:
            if is_plain_softmax(step, key):
                if not checked:
                    checked.append(slab_softmax_exact(x.shape[0]))
                if not checked[0]:
                    raise _NotExactHere()
                x = softmax_slab(x, start * plane, total)
            else:
                x = step({key: x})[key]
                x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x

    return reduce


def run_inferer(inferer, post, image: torch.Tensor, predictor, key: str = "pred") -> tuple[torch.Tensor, object | None]:
    """``inferer(image, predictor)[0]`` as float32 on the CPU, and the postprocessing still to run on it.

    ``image`` is ``(1, C, *spatial)``. Where :func:`plan_streaming` finds leading per-voxel steps, they are
    applied slab by slab and the rest of ``post`` is returned; otherwise (or where the slab-wise softmax
    is not exact on this machine) this is the bundle's own inferer on the whole volume and ``post`` itself.
    When the device runs out of memory stitching the output there, it is stitched on the CPU.
    """
    attempts = [("the output stitched as the bundle says", lambda: _run_inferer(inferer, post, image, predictor, key))]
    if hasattr(inferer, "device") and image.device.type != "cpu" and str(inferer.device or image.device) != "cpu":
        attempts.append(("the output stitched on cpu",
                         lambda: _run_inferer(inferer, post, image, predictor, key, stitch_on_cpu=True)))
    return try_in_turn(attempts, f"the bundle's inferer on {tuple(image.shape[2:])} voxels", lambda: _restart(predictor))


def _restart(predictor) -> None:
    """Windows are counted afresh when the sliding window starts again (a predictor that counts them)."""
    if hasattr(predictor, "done"):
        predictor.done = 0


def _run_inferer(inferer, post, image: torch.Tensor, predictor, key: str,
                 stitch_on_cpu: bool = False) -> tuple[torch.Tensor, object | None]:
    plan = plan_streaming(inferer, post, key) if post is not None else None
    if plan is not None:
        device = "cpu" if stitch_on_cpu else inferer.device
        if device is None and inferer.cpu_thresh is not None and image.shape[2:].numel() > inferer.cpu_thresh:
            device = "cpu"
        try:
            out = stream_sliding_window(
                image, inferer.roi_size, inferer.sw_batch_size, predictor, inferer.overlap, inferer.mode,
                inferer.sigma_scale, inferer.padding_mode, inferer.cval, inferer.sw_device, device,
                inferer.roi_weight_map, reducer=_reducer(plan.steps, tuple(image.shape[2:]), key))
            return out[0], plan.rest
        except (_NotExactHere, NotStreamable) as e:
            log.warning("running the bundle's sliding window on the whole volume instead%s", f" ({e})" if str(e) else "")
            _restart(predictor)
    if stitch_on_cpu:
        inferer = copy.copy(inferer)
        inferer.device = torch.device("cpu")
    return torch.as_tensor(inferer(image, predictor))[0].float().cpu(), post
