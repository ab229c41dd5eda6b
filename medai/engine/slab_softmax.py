"""``torch.softmax(whole, dim=0)`` computed a slab at a time, with the whole tensor's exact bits.

torch's CPU softmax over a non-last dimension computes most voxels with vectorised ``exp`` (SLEEF) and
the last ``n % V`` voxels of each thread's share of the ``n`` voxels with scalar ``std::exp``; the two
differ in the last bits for most inputs. Which voxels take the scalar path therefore depends on the
whole tensor's size and the thread count, so a plain softmax of a slab does not reproduce the
whole-volume values (and argmax can, rarely, change). Here every voxel of a slab is computed on the
vector path (the slab is padded to a multiple of ``V x threads``) and the voxels the whole-volume call
would give to the scalar path are recomputed on it. :func:`slab_softmax_exact` checks this model of
the kernel against ``torch.softmax`` in the running process; callers fall back when it does not hold.
"""

from __future__ import annotations

import logging

import torch

from .common import softmax_

log = logging.getLogger(__name__)

_checked: dict[tuple, bool] = {}


def vector_width() -> int:
    """float32 lanes of torch's CPU kernels on this machine (AVX512: 16, otherwise 8)."""
    return 16 if torch.backends.cpu.get_cpu_capability() == "AVX512" else 8


def scalar_voxels(total: int, threads: int, width: int) -> list[tuple[int, int]]:
    """Voxel ranges ``[a, b)`` that torch's softmax over dim 0 of ``(C, total)`` computes with scalar ``exp``.

    ``parallel_for`` gives each of ``min(threads, total)`` threads ``ceil(total / n)`` voxels; inside a
    share, full vectors first, then the ``share % width`` voxels left over.
    """
    n = max(1, min(threads, total))
    share = -(-total // n)
    out = []
    for begin in range(0, total, share):
        end = min(total, begin + share)
        tail = (end - begin) % width
        if tail:
            out.append((end - tail, end))
    return out


def softmax_slab(x: torch.Tensor, offset: int, total: int) -> torch.Tensor:
    """Softmax over dim 0 of ``x`` ``(C, ...)``, a slab of the flattened voxels ``[offset, offset + m)`` of a
    whole ``(C, total)`` tensor, with the bits ``torch.softmax(whole, 0)`` gives those voxels (CPU, float32)."""
    c = x.shape[0]
    m = x[0].numel()
    threads, width = torch.get_num_threads(), vector_width()
    block = width * max(1, threads)  # each thread's share of the padded length is whole vectors
    padded = -(-m // block) * block
    work = torch.empty((c, padded), dtype=x.dtype)
    work[:, :m].view(c, *x.shape[1:]).copy_(x)
    if padded > m:
        work[:, m:] = work[:, :1]
    index = [i - offset for a, b in scalar_voxels(total, threads, width) for i in range(max(a, offset), min(b, offset + m))]
    columns = work[:, index].clone() if index else None
    softmax_(work, 0)  # every voxel on the vector path: the padded length splits into whole vectors per thread
    if columns is not None:  # (k, C, 1) over dim 1: one voxel per row, all on the scalar path
        work[:, index] = torch.softmax(columns.t().contiguous()[:, :, None], 1)[:, :, 0].t()
    return work[:, :m].view(c, *x.shape[1:])


def slab_softmax_exact(channels: int) -> bool:
    """Whether :func:`softmax_slab` reproduces ``torch.softmax`` here, checked once per (classes, threads, width)."""
    key = (channels, torch.get_num_threads(), vector_width(), torch.backends.cpu.get_cpu_capability())
    if key not in _checked:
        g = torch.Generator().manual_seed(7)
        ok = True
        with torch.inference_mode():
            for total, cuts in ((key[2] * key[1] * 3 + 7, (5, 40)), (4099, (1, 333, 1400, 3000))):
                whole = torch.randn(channels, total, generator=g) * 8
                want = torch.softmax(whole, 0)
                bounds = [0, *cuts, total]
                got = torch.cat([softmax_slab(whole[:, a:b], a, total) for a, b in zip(bounds, bounds[1:])], 1)
                ok = ok and torch.equal(got, want)
        if not ok:
            log.warning("slab-wise softmax does not reproduce torch.softmax on this machine (%s); using the whole-volume path", key)
        _checked[key] = ok
    return _checked[key]
