"""Keep a compute process's large freed buffers mapped (glibc's malloc).

A block of chips allocates the same large tensors over and over: every device state
array, every ``(C·N, …)`` activation (110 MB for LeNet's first layer on 8 chips and
1,000 inputs). glibc serves allocations above a threshold (dynamic, at most 32 MiB) with
a fresh ``mmap`` and unmaps them when freed, and trims freed memory at the top of its
heap, so each of those tensors is page-faulted in again, 4 KiB at a time, on every use:
for LeNet that was a third of the batched path's time (``benchmarks/README.md``). This is
why PyTorch's CPU performance guides recommend a caching allocator (jemalloc, tcmalloc)
for inference; the same effect without another dependency is two ``mallopt`` settings:
allocations up to 1 GiB come from the heap, and freed memory stays mapped for the next
block. A worker's resident memory then stays at its peak (one block's working set)
between units instead of dropping. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30
_done = False


def keep_freed_memory() -> bool:
    """Apply the settings once per process; True where they took effect (glibc)."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only (musl has no mallopt thresholds)
        return False
    _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES))
    return _done
