"""Sliding-window inference whose stitched output is finished slab by slab along the first spatial axis.

Same windows, order, batches, padding, importance map and per-voxel arithmetic as MONAI's
``sliding_window_inference`` (``p *= w``, ``out += p``, ``count += w`` in window order, ``out /= count``,
crop), but a plane of the output is divided and handed to ``reducer`` as soon as no later window
touches it. The accumulator is only about one window deep instead of the whole image x classes.
``Testing/Python/test_streaming.py`` checks the stitched values are ``torch.equal`` to MONAI's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# (finished planes (C, k, ...), index of the first plane along the first spatial axis) -> (C', k, ...)
Reducer = Callable[[torch.Tensor, int], torch.Tensor]


class NotStreamable(ValueError):
    """The network's output cannot be stitched here (not one tensor, or not the window's size)."""


# Planes are handed to the reducer in chunks of at most about this many elements.
CHUNK_ELEMENTS = 2**23


def _windows(image_size: Sequence[int], roi: Sequence[int], overlap: Sequence[float]) -> list[tuple[slice, ...]]:
    """MONAI's own scan interval and window list (first spatial axis slowest)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval(image_size, roi, len(roi), overlap)
    return dense_patch_slices(image_size, roi, interval, return_slice=True)


def _importance_map(image_size, roi, mode, sigma_scale, roi_weight_map, sw_device, dtype) -> torch.Tensor:
    """The window weights exactly as ``sliding_window_inference`` builds them (clamp included)."""
    from monai.data.utils import compute_importance_map, get_valid_patch_size
    from monai.utils import convert_data_type, ensure_tuple

    valid = get_valid_patch_size(image_size, roi)
    if valid == tuple(roi) and roi_weight_map is not None:
        weights = roi_weight_map
    else:
        weights = compute_importance_map(ensure_tuple(valid), mode=mode, sigma_scale=sigma_scale, device=sw_device, dtype=dtype)
        if len(weights.shape) == len(roi):
            weights = weights[None, None]
    weights = convert_data_type(weights, torch.Tensor, device=sw_device, dtype=dtype)[0]
    if len(weights.shape) == len(roi):
        weights = weights[None, None]
    return weights.to(dtype=dtype, device=sw_device)


def stream_sliding_window(inputs: torch.Tensor, roi_size: Sequence[int] | int, sw_batch_size: int, predictor: Callable,
                          overlap: Sequence[float] | float = 0.25, mode: str = "constant",
                          sigma_scale: Sequence[float] | float = 0.125, padding_mode: str = "constant", cval: float = 0.0,
                          sw_device=None, device=None, roi_weight_map: torch.Tensor | None = None,
                          reducer: Reducer | None = None, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """``sliding_window_inference`` for one image ``(1, C, *spatial)`` with the output finished in slabs.

    Returns ``(1, C', *spatial)``: the stitched output itself when ``reducer`` is None (on ``device``),
    else the reducer's outputs for every finished chunk of planes, put together.
    The predictor must return one tensor with the window's spatial size.
    """
    from monai.utils import PytorchPadMode, ensure_tuple_rep, fall_back_tuple, look_up_option

    inputs = torch.as_tensor(inputs)  # a MetaTensor's values; its meta is the caller's business
    if inputs.shape[0] != 1:
        raise ValueError(f"streamed sliding window takes one image at a time, got a batch of {inputs.shape[0]}")
    nd = inputs.ndim - 2
    overlap = ensure_tuple_rep(overlap, nd)
    if any(o < 0 or o >= 1 for o in overlap):
        raise ValueError(f"overlap must be >= 0 and < 1, got {overlap}")
    dtype = inputs.dtype
    device = torch.device(device) if device is not None else inputs.device
    sw_device = torch.device(sw_device) if sw_device is not None else inputs.device
    size = tuple(inputs.shape[2:])
    roi = fall_back_tuple(roi_size, size)
    image_size = tuple(max(s, r) for s, r in zip(size, roi))
    pad: list[int] = []  # F.pad order: last axis first
    for k in range(nd - 1, -1, -1):
        diff = max(roi[k] - size[k], 0)
        pad += [diff // 2, diff - diff // 2]
    if any(pad):
        inputs = F.pad(inputs, pad=pad, mode=look_up_option(padding_mode, PytorchPadMode), value=cval)
    before = [pad[2 * (nd - 1 - d)] for d in range(nd)]  # padding before each axis, in axis order
    crop = tuple(slice(b, b + s) for b, s in zip(before, size))

    slices = _windows(image_size, roi, overlap)
    weights = _importance_map(image_size, roi, mode, sigma_scale, roi_weight_map, sw_device, dtype)
    count = torch.zeros((1, 1, *image_size), dtype=dtype, device=device)
    w_out = weights.to(device)
    for s in slices:
        count[(slice(None), slice(None), *s)] += w_out
    batches = [slices[i:i + sw_batch_size] for i in range(0, len(slices), sw_batch_size)]
    depth = max(max(s[0].stop for s in b) - min(s[0].start for s in b) for b in batches)

    state: dict = {"out": None}

    def emit(buf: torch.Tensor, lo: int, a: int, b: int) -> None:
        """Divide padded planes ``[a, b)`` (buffer starts at plane ``lo``) and pass the cropped part on."""
        slab = buf[:, :, a - lo:b - lo]
        slab /= count[:, :, a:b]
        a2, b2 = max(a, crop[0].start), min(b, crop[0].stop)
        if a2 >= b2:
            return
        planes = slab[(0, slice(None), slice(a2 - a, b2 - a), *crop[1:])]
        step = max(1, chunk_elements // max(1, planes.shape[0] * planes[0, 0].numel()))
        for i in range(0, planes.shape[1], step):
            chunk = planes[:, i:i + step]
            start = a2 - crop[0].start + i
            res = reducer(chunk, start) if reducer is not None else chunk
            if state["out"] is None:
                state["out"] = torch.empty((res.shape[0], *size), dtype=res.dtype, device=res.device)
            state["out"][:, start:start + res.shape[1]] = res

    buf: torch.Tensor | None = None
    lo = 0
    for batch in batches:
        first = min(s[0].start for s in batch)
        if buf is not None and first > lo:  # planes before ``first``: no later window touches them
            emit(buf, lo, lo, first)
            shift, kept = first - lo, buf.shape[2] - (first - lo)
            for i in range(kept):  # ascending: a plane is read before anything is written over it
                buf[:, :, i].copy_(buf[:, :, i + shift])
            buf[:, :, kept:].zero_()
            lo = first
        if len(batch) > 1:
            win = torch.cat([inputs[(slice(0, 1), slice(None), *s)] for s in batch]).to(sw_device)
        else:
            win = inputs[(slice(0, 1), slice(None), *batch[0])].to(sw_device)
        out = predictor(win)
        if not isinstance(out, torch.Tensor):
            raise NotStreamable(f"streamed sliding window needs a network returning one tensor, got {type(out).__name__}")
        if tuple(out.shape[2:]) != tuple(roi):
            raise NotStreamable(f"network output window {tuple(out.shape[2:])} differs from the input window {tuple(roi)}")
        out = torch.as_tensor(out)
        out *= weights
        out = out.to(device)
        if buf is None:
            buf = torch.zeros((1, out.shape[1], depth, *image_size[1:]), dtype=dtype, device=device)
        for p, s in zip(out, batch):
            buf[(slice(0, 1), slice(None), slice(s[0].start - lo, s[0].stop - lo), *s[1:])] += p
        del out, win
    assert buf is not None
    emit(buf, lo, lo, image_size[0])
    return state["out"][None]
