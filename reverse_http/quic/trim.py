"""Give the C heap's free memory back to the operating system after a flood.

A UDP flood allocates and frees hundreds of thousands of datagram buffers (above
pymalloc's 512-byte limit, so straight from malloc) and cipher contexts. glibc keeps
what was freed in its arenas, and trims the top of the main heap only when the free
block there is large, so the proxy's RSS stays at its peak long after the flood.
``malloc_trim(0)`` returns the free pages of every arena. Only glibc has it; elsewhere
(musl, macOS) this does nothing, and it is best effort: no error reaches the caller.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from collections.abc import Callable

log = logging.getLogger(__name__)

_trim: Callable[[int], int] | None = None
_loaded = False


def _load() -> Callable[[int], int] | None:
    global _trim, _loaded
    if not _loaded:
        _loaded = True
        if platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                func = libc.malloc_trim
                func.argtypes = [ctypes.c_size_t]
                func.restype = ctypes.c_int
                _trim = func
            except (OSError, AttributeError) as exc:
                log.debug("malloc_trim unavailable: %s", exc)
    return _trim


def release_free_memory() -> bool:
    """Return the C heap's free pages to the OS; False where that is not possible."""
    trim = _load()
    if trim is None:
        return False
    trim(0)
    return True


def resident_bytes() -> int | None:
    """This process's resident set size (Linux /proc/self/statm), None elsewhere: what a
    release gave back is the difference around it."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")
