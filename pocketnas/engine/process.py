"""The process-wide settings a run asks for (torch's CPU thread count, glibc malloc tuning), applied in one place:
:func:`configure_process`, which the entry points ``train()`` and ``search()`` call and log. Building a
``Trainer`` or ``Searcher`` changes nothing process-wide.

glibc malloc tuning for CPU training, two ways (:data:`MALLOC_MODES`):

- ``speed``: PyTorch's CPU training allocates and frees many large activation buffers each step; with glibc's
  defaults these are returned to the kernel and faulted back in every step. Raising the mmap threshold to its
  maximum (32 MiB on 64-bit) and the trim threshold keeps them in the heap. Measured with ``bench/train.py``.
- ``lean``: the opposite, for a small machine: every buffer of 256 KiB or more is mapped on its own and returned at
  once, so the heap does not fragment and the peak is what the step holds live (PocketNetS-128, batch 64 with
  ``grad_checkpointing``: 3.45 GB with ``speed``, 1.50 GB with ``lean``), paid with page faults each step (a bare
  step at batch 32 took 2.9 times as long; both in ``bench/memory.py``).

A no-op off glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any, Dict, Optional, Tuple, Union

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MALLOC_MODES = {"speed": (32 << 20, 1 << 30), "lean": (256 << 10, 128 << 10)}  # (mmap, trim) thresholds
_done = False
_applied: Tuple[int, int] = (0, 0)


def malloc_mode(setting: Union[bool, str]) -> Optional[str]:
    """A config's ``tune_malloc`` (true, false or lean) as a mode of :data:`MALLOC_MODES`, None for glibc's
    defaults; anything else is a ValueError."""
    text = str(setting).lower()
    if text in ("true", "speed"):
        return "speed"
    if text in ("false", "none", "system"):
        return None
    if text == "lean":
        return "lean"
    raise ValueError(f"tune_malloc must be true, false or lean, got {setting!r}")


def tune_glibc_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Apply the thresholds to this process (again only when they change); True when glibc accepted them."""
    global _done, _applied
    if _done and _applied == (mmap_threshold, trim_threshold):
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
    _applied = (mmap_threshold, trim_threshold) if ok else (0, 0)
    if ok:
        logger.debug("glibc malloc: mmap threshold %d, trim threshold %d", mmap_threshold, trim_threshold)
    return ok


def configure_process(threads: int = 0, tune_malloc: Union[bool, str] = False) -> Dict[str, Any]:
    """Set torch's intra-op thread count (``threads`` > 0) and glibc's malloc thresholds (``tune_malloc``: true or
    ``speed``, ``lean``, false) for the whole process; returns what is in force, and logs it."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    mode = malloc_mode(tune_malloc)
    tuned = tune_glibc_malloc(*MALLOC_MODES[mode]) if mode else _done
    done = {"threads": torch.get_num_threads(), "malloc_tuned": tuned, "malloc": mode if mode and tuned else None}
    logger.info("process-wide: %d torch threads, glibc malloc %s", done["threads"],
                f"tuned for {mode}" if mode and tuned else "at its defaults" if not _done else "as tuned before")
    return done
