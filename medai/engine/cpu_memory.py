"""Let a network call reuse the CPU memory it frees (glibc, i.e. Linux; elsewhere nothing changes).

glibc gives every allocation above its mmap threshold (128 KiB, rising to at most 32 MiB) its own
``mmap`` and returns it with ``munmap`` when freed, so each large tensor a network makes starts as
fresh pages that the kernel must fault in and zero. Measured on deepbet's brain-extraction network
(256x256x256, 2 CPU threads): 430,000 page faults and 1.2 s of system time in a 1.7 s call.

Inside :func:`network_call`, large blocks come from the heap and freed ones stay there, so a layer's
output lands where an earlier activation was freed: the warm brain extraction went from 2.7 s to
1.6 s, with bitwise equal outputs (only where the bytes live changes). When the outermost call ends,
glibc's defaults come back and ``malloc_trim`` returns the free heap memory, so what the network
freed is not kept resident beside what the run does next (keeping it for the whole run grew the
wholeBody bundle's peak at 512x512x110 from 4.5 to 5.5 GB; trimmed after each call, 4.9 GB).
``MEDAI_REUSE_FREED_MEMORY=0`` turns it off. See docs/performance.md.
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

# mallopt parameters and glibc's documented defaults (mallopt(3))
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
NEVER_TRIM = 2**31 - 1  # mallopt takes an int

# Reuse pays when a call's output fits where its activations were freed. A larger output (a window batch of the
# 105-class wholeBody bundle: 4 x 105 x 96^3 float32, 1.5 GB) grows the heap while the freed activations stay
# resident until the call ends: its peak at 512x512x110 went from 4.5 to 4.9-5.3 GB. Such networks run without it.
REUSE_OUTPUT_LIMIT = 256 << 20

_lock = threading.Lock()
_calls = 0  # open network_call scopes, in any thread
_libc: ctypes.CDLL | None | bool = False  # False: not looked up yet
_output_bytes: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()  # each network's last output


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


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable``), or 4 GiB when unknown (not Linux)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def enabled() -> bool:
    """Whether :func:`network_call` changes anything in this process."""
    return os.environ.get("MEDAI_REUSE_FREED_MEMORY", "1").strip() != "0" and glibc() is not None


def call_network(net: Any, *inputs: Any) -> Any:
    """``net(*inputs)`` in a :func:`network_call`, unless this network's last output was over ``REUSE_OUTPUT_LIMIT``."""
    with network_call(_output_bytes.get(net, 0) <= REUSE_OUTPUT_LIMIT):
        out = net(*inputs)
    try:
        _output_bytes[net] = _nbytes(out)
    except TypeError:  # not weakly referable (a plain function): decided afresh each call
        pass
    return out


def _nbytes(out: Any) -> int:
    if isinstance(out, (list, tuple)):
        return sum(_nbytes(o) for o in out)
    if isinstance(out, dict):
        return sum(_nbytes(o) for o in out.values())
    return int(out.numel() * out.element_size()) if hasattr(out, "element_size") else 0


@contextmanager
def network_call(reuse: bool = True) -> Iterator[None]:
    """A network call: its large blocks come from the heap and what it frees is reused, not unmapped.

    Process-wide (glibc has one allocator); nested and concurrent calls are counted, and the last one
    to end restores glibc's defaults and trims the heap. ``reuse=False``: nothing changes.
    """
    global _calls
    libc = glibc() if enabled() and reuse else None
    if libc is None:
        yield
        return
    with _lock:
        _calls += 1
        if _calls == 1:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
    try:
        yield
    finally:
        with _lock:
            _calls -= 1
            if _calls == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
