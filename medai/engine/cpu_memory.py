"""Keep freed CPU memory for reuse while a model runs (glibc, i.e. Linux; elsewhere nothing changes).

glibc gives every allocation above its mmap threshold (128 KiB, rising to at most 32 MiB) its own
``mmap`` and returns it with ``munmap`` when freed, so each large tensor a network makes starts as
fresh pages that the kernel must fault in and zero. Measured on deepbet's brain-extraction network
(256x256x256, 2 CPU threads): 430,000 page faults and 1.2 s of system time in a 1.7 s call. Inside
:func:`reuse_freed_memory`, large blocks come from the heap instead and freed ones stay there for the
next layer (0.86-1.0 s per call, outputs bitwise equal: only where the bytes live changes). When the
outermost run ends, glibc's settings go back to their defaults and ``malloc_trim`` returns the free
memory to the system. ``MEDAI_REUSE_FREED_MEMORY=0`` turns it off. See docs/performance.md.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)

# mallopt parameters and glibc's documented defaults (mallopt(3))
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
NEVER_TRIM = 2**31 - 1  # mallopt takes an int

_lock = threading.Lock()
_depth = 0
_libc: ctypes.CDLL | None | bool = False  # False: not looked up yet


def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (the only one whose ``mallopt`` this module knows), else None."""
    global _libc
    if _libc is False:
        try:
            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version.restype = ctypes.c_char_p
            libc.gnu_get_libc_version()
            libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
            _libc = libc
        except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): leave the allocator alone
            _libc = None
    return _libc


def enabled() -> bool:
    """Whether :func:`reuse_freed_memory` changes anything in this process."""
    return os.environ.get("MEDAI_REUSE_FREED_MEMORY", "1").strip() != "0" and glibc() is not None


@contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """While the outermost of these is open, large allocations come from the heap and freed memory stays there.

    Process-wide (glibc has one allocator); nested and concurrent uses are counted, and the last one to
    leave restores glibc's defaults and trims the heap.
    """
    global _depth
    libc = glibc() if enabled() else None
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
