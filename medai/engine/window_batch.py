"""Sliding-window batch size chosen from free memory, for cards that ask for it (``"sw_batch_size": "auto"``).

Several windows per network call are much faster than one at a time (the spleen bundle's UNet, 96^3
windows, 2 CPU threads: four windows in 0.58 s as one batch of 4, 1.27 s one by one), but a batch
must fit. A probe call on one window measures what a window needs (CUDA: the allocator's peak; CPU:
the sum of every layer's output, an upper bound), and the batch is the most windows whose need fits
in half the free memory, at most ``MAX_AUTO_BATCH`` and at most the number of windows.

Batching changes the arithmetic's order inside the network, so outputs differ from one-window calls
in the last bits (about 3e-7 for that UNet): cards opt in; bundles keep their own ``sw_batch_size``.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from .cpu_memory import available_memory

log = logging.getLogger(__name__)

MAX_AUTO_BATCH = 8
FREE_FRACTION = 0.5  # of the free memory a batch may take: the accumulator and the rest of the run need room too


def free_memory(device: torch.device) -> int:
    """Bytes free now: the CUDA device's free memory, or the system's available memory for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return available_memory()


def window_bytes(net: Callable, window: torch.Tensor) -> int:
    """Memory one window needs in a network call, measured on ``window`` (shape ``(1, C, *roi)``, on its device)."""
    device = window.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        net(window)
        torch.cuda.synchronize(device)
        return max(int(torch.cuda.max_memory_allocated(device) - start), 1)
    total = [window.numel() * window.element_size()]

    def count(_module, _inputs, output):
        tensors = output if isinstance(output, (list, tuple)) else [output]
        total[0] += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

    modules = net.modules() if isinstance(net, torch.nn.Module) else []
    hooks = [m.register_forward_hook(count) for m in modules if not any(True for _ in m.children())]
    try:
        net(window)
    finally:
        for hook in hooks:
            hook.remove()
    return total[0]


def choose_batch(per_window: int, free: int, windows: int) -> int:
    """The most windows whose need fits in ``FREE_FRACTION`` of ``free``: at least 1, at most ``MAX_AUTO_BATCH`` and ``windows``."""
    fits = int(free * FREE_FRACTION // max(per_window, 1))
    return max(1, min(fits, MAX_AUTO_BATCH, max(windows, 1)))


def auto_batch(net: Callable, channels: int, roi: list[int], device: torch.device, windows: int) -> int:
    """``sw_batch_size`` for a card that asks for ``"auto"``: one probe window, then :func:`choose_batch`."""
    probe = torch.zeros((1, channels, *roi), device=device)
    per_window = window_bytes(net, probe)
    free = free_memory(device)
    batch = choose_batch(per_window, free, windows)
    log.info("sliding window: %d window(s) per batch (one needs %.0f MB, %.0f MB free on %s)", batch, per_window / 2**20,
             free / 2**20, device)
    return batch
