"""glibc malloc tuning (memory_reuse.py): freed MB-sized blocks are reused, not page-faulted in afresh."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ep2p_loc_ros.memory_reuse import keep_freed_memory

# Frames' worth of temporaries of varying sizes (MB), in the main thread and in a worker thread (a callback
# thread has its own malloc arena); prints the page faults of the last three rounds.
WORKLOAD = """
import resource, sys, threading
import numpy as np
from ep2p_loc_ros.memory_reuse import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
faults = []
def frames():
    for rnd in range(6):
        if rnd == 3:
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        live = []
        for mb in (3, 40, 7, 12, 5, 25, 9):
            live.append(np.ones(mb << 18, np.float32))  # allocated and touched
            del live[:-2]
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
frames()
worker = threading.Thread(target=frames)
worker.start()
worker.join()
print(*faults)
"""


def _faults(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", WORKLOAD, mode], capture_output=True, text=True, check=True)
    return [int(v) for v in out.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    default, tuned = _faults("default"), _faults("tuned")
    # 4 KiB pages: the workload touches ~80 MB a round, so faulting it all afresh is ~20,000 faults a round
    assert sum(default) > 1000, f"glibc's defaults should fault fresh pages in this workload: {default}"
    assert sum(tuned) < 0.05 * sum(default), (default, tuned)


def test_thresholds_out_of_glibc_range_are_refused() -> None:
    with pytest.raises(ValueError, match="mmap_threshold_mb"):
        keep_freed_memory(mmap_threshold_mb=64)
    with pytest.raises(ValueError, match="mmap_threshold_mb"):
        keep_freed_memory(mmap_threshold_mb=32, trim_threshold_mb=16)
