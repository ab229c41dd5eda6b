"""What a run does when the device runs out of memory: try again with less held on it, then say what to do.

A sliding window holds the stitched output of all classes (on the GPU below ``GPU_STITCH_LIMIT``) plus a
batch of windows. When an allocation fails there, the run goes on with the output stitched on the CPU and
one window per network call, as MONAI's ``SlidingWindowInfererAdapt`` does; when that fails too, the error
names the model, the input and the way out (the CPU, or a smaller input).
"""

from __future__ import annotations

import gc
import logging
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

# what the CUDA libraries say when they cannot allocate their workspace (not always torch.OutOfMemoryError)
_MESSAGES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "can't allocate memory")


class OutOfMemory(RuntimeError):
    """The device ran out of memory even with the least this run can hold on it."""


def is_out_of_memory(exc: BaseException) -> bool:
    """``exc`` is an allocation failure (torch's, CUDA's libraries', or the CPU allocator's)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _MESSAGES)


def free_device_memory() -> None:
    """Give back what the failed attempt left cached, so that the next one starts from a clean device."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def try_in_turn(attempts: Sequence[tuple[str, Callable[[], T]]], what: str,
                before_retry: Callable[[], None] | None = None) -> T:
    """The first of ``attempts`` (description, call) that does not run out of memory.

    Each later attempt must hold less on the device than the one before. Errors other than running out
    of memory pass through at once; running out on the last attempt raises :class:`OutOfMemory` (the run's
    :func:`way_out_when_out_of_memory` gives back the device memory then).
    """
    for n, (how, call) in enumerate(attempts):
        try:
            return call()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if n == len(attempts) - 1:
                raise OutOfMemory(f"{what}: out of memory with {how} ({str(exc).splitlines()[0][:200]})") from exc
            free_device_memory()
            log.warning("%s: out of memory with %s; trying again with %s", what, how, attempts[n + 1][0])
            if before_retry is not None:
                before_retry()
    raise ValueError("try_in_turn needs at least one attempt")


def way_out(device: torch.device) -> str:
    """What the user can do when even the least this run can hold does not fit on ``device``."""
    if device.type == "cuda":
        return ("run it on the CPU (device cpu: `medai ... --device cpu`, or Device: CPU in the module panel), "
                "close other programs using the GPU, or crop the input to the region of interest")
    return "crop the input to the region of interest, or close other programs to free memory"


@contextmanager
def way_out_when_out_of_memory(what: str, device: torch.device) -> Iterator[None]:
    """Running out of memory inside becomes :class:`OutOfMemory` naming ``what`` (model and input) and the way out."""
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        free_device_memory()
        raise OutOfMemory(f"{what}: {str(exc).splitlines()[0][:400]}; {way_out(device)}") from exc
