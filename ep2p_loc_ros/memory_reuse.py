"""Keep freed memory for the next frame instead of handing it back to the OS (glibc malloc tuning).

Why: every frame allocates and frees the same few MB-sized temporaries (matching's logits, the pixel MLP's
activations, IPR's depth images). glibc's malloc adapts two thresholds as a process runs: blocks above the mmap
threshold get a fresh mapping each time, and free memory above the trim threshold goes back to the OS; both start
low (128 KiB) and rise only when it frees such a block. Until they have risen far enough, and again in threads
whose arena has not seen those sizes, each frame's temporaries are fresh pages, and each fresh 4 KiB page costs a
page fault on first touch. Tracking on held-out outdoor drive 900 took 5,000 faults a frame this way, 180 with the
thresholds fixed here (p50 78.4 -> 73.3 ms; session 24, models/README.md). The price: up to
``trim_threshold_mb`` of freed memory stays mapped in the process.

Only glibc has ``mallopt``; elsewhere (musl, macOS, Windows) nothing changes and :func:`keep_freed_memory` says so.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX_MB = 32  # glibc refuses more on 64-bit hosts (DEFAULT_MMAP_THRESHOLD_MAX)


def keep_freed_memory(mmap_threshold_mb: int = _MMAP_THRESHOLD_MAX_MB, trim_threshold_mb: int = 256) -> bool:
    """Fix glibc's mmap and trim thresholds for this process (module docstring); True when both were set.

    Process-wide and idempotent; setting them also stops glibc's own adjustment of both."""
    if not 0 < mmap_threshold_mb <= _MMAP_THRESHOLD_MAX_MB or trim_threshold_mb < mmap_threshold_mb:
        raise ValueError(
            f"need 0 < mmap_threshold_mb <= {_MMAP_THRESHOLD_MAX_MB} and trim_threshold_mb >= mmap_threshold_mb, "
            f"got {mmap_threshold_mb} and {trim_threshold_mb}"
        )
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold_mb << 20) == 1
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold_mb << 20) == 1 and mmap_ok)
