"""The process-wide settings a run asks for (torch's CPU thread count, glibc malloc tuning), applied in one place:
:func:`configure_process`, which the entry points ``train()`` and ``search()`` call and log. Building a
``Trainer`` or ``Searcher`` changes nothing process-wide.

glibc malloc tuning for CPU training:

PyTorch's CPU training allocates and frees many large activation buffers each step; with glibc's defaults these
are returned to the kernel and faulted back in every step. Raising the mmap threshold to its maximum (32 MiB on
64-bit) and the trim threshold keeps them in the heap. Measured with ``bench/train.py``; a no-op off glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any, Dict

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_done = False


def tune_glibc_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Apply the settings once per process; True when glibc accepted them."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                        trim_threshold))
    except (OSError, AttributeError):
        return False
    _done = ok
    if ok:
        logger.debug("glibc malloc: mmap threshold %d, trim threshold %d", mmap_threshold, trim_threshold)
    return ok


def configure_process(threads: int = 0, tune_malloc: bool = False) -> Dict[str, Any]:
    """Set torch's intra-op thread count (``threads`` > 0) and glibc's malloc thresholds (``tune_malloc``) for the
    whole process; returns what is in force, and logs it."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    done = {"threads": torch.get_num_threads(), "malloc_tuned": tune_glibc_malloc() if tune_malloc else _done}
    logger.info("process-wide: %d torch threads, glibc malloc %s", done["threads"],
                "tuned (mmap/trim thresholds raised)" if done["malloc_tuned"] else "at its defaults")
    return done
