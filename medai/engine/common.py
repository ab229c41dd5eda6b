"""Helpers shared by the segmentation and classification engines: input stacking, activations, autocast."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext

import torch

from ..geometry import GeometryError, Volume, check_voxels, same_grid, to_ijk_array
from ..resample import resample_volume_to

log = logging.getLogger(__name__)


def on_first_grid(volumes: list[Volume]) -> list[Volume]:
    """The volumes, their voxels checked, the later ones resampled onto the first one's grid where they differ."""
    if not volumes:
        raise GeometryError("no input volume given; select at least one volume")
    for v in volumes:
        check_voxels(v)
    ref, out = volumes[0], []
    for v in volumes:
        if v is not ref and not same_grid(v, ref):
            log.info("resampling %s onto the grid of %s", v.name, ref.name)
            v = resample_volume_to(v, ref)
        out.append(v)
    return out


def stack_inputs(volumes: list[Volume], expected_channels: int, model_name: str) -> torch.Tensor:
    """Channel-first ``(C, I, J, K)`` float32 tensor; later volumes are resampled onto the first one's grid."""
    channels = [torch.from_numpy(to_ijk_array(v)) for v in on_first_grid(volumes)]
    total = sum(c.shape[0] for c in channels)
    if total != expected_channels:
        raise GeometryError(
            f"model {model_name} expects {expected_channels} input channel(s), got {total} "
            f"from {len(volumes)} volume(s) ({', '.join(v.name for v in volumes)}); select matching inputs"
        )
    if len(channels) == 1:
        return channels[0].to(torch.float32)  # copies only if the volume is not float32 already
    return torch.cat([c.to(torch.float32) for c in channels], dim=0)


def activation(x: torch.Tensor, name: str) -> torch.Tensor:
    """Apply a card's output activation (``softmax`` over dim 1, ``sigmoid``, or ``none``)."""
    if name == "softmax":
        return torch.softmax(x, dim=1)
    if name == "sigmoid":
        return torch.sigmoid(x)
    return x


def softmax_(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.softmax(x, dim)`` written into ``x`` itself: the same kernel and values, without a second tensor of all classes.

    Call under ``torch.inference_mode()`` for tensors made there; Testing/Python/test_memory.py checks
    the values are bit-identical to ``torch.softmax`` with the installed torch.
    """
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"softmax_ needs a float32/float64 tensor, got {x.dtype}")
    if not x.is_contiguous() or x.device.type != "cpu":  # strided: the kernel writes ``out`` as if contiguous;
        return x.copy_(torch.softmax(x, dim))  # CUDA: in-place aliasing unverified (no GPU to test): through a copy
    return torch._softmax(x, dim, False, out=x)


def autocast(device: torch.device, amp: bool = True):
    """float16 autocast on CUDA when ``amp`` (the model's own setting), nothing on the CPU."""
    return torch.autocast("cuda", dtype=torch.float16) if amp and device.type == "cuda" else nullcontext()


@contextmanager
def inference(device: torch.device, amp: bool = True):
    """Network calls: ``torch.inference_mode`` (no autograd bookkeeping) and, when ``amp``, float16 autocast on CUDA."""
    with torch.inference_mode(), autocast(device, amp):
        yield


_threads_set = False


def set_cpu_threads() -> int:
    """Once per process: intra-op threads = the CPUs this process may use (``MEDAI_NUM_THREADS`` overrides).

    torch's default counts the machine's cores, ignoring CPU affinity and container limits, which
    oversubscribes a restricted process (and the Slicer GUI thread beside it).
    """
    global _threads_set
    if not _threads_set:
        _threads_set = True
        env = os.environ.get("MEDAI_NUM_THREADS", "").strip()
        allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        wanted = int(env) if env.isdigit() and int(env) > 0 else min(torch.get_num_threads(), allowed)
        if wanted != torch.get_num_threads():
            log.info("using %d CPU threads", wanted)
            torch.set_num_threads(wanted)
    return torch.get_num_threads()
