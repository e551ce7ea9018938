"""Helpers shared by the benchmark scripts (timing and the environment they ran in)."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared")


def environment() -> Dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "cpus": str(os.cpu_count()),
        "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "(default)"),
        "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_", "(default)"),
    }


def print_environment() -> None:
    print("environment: " + ", ".join(f"{k}={v}" for k, v in environment().items()))


def median_time(fn: Callable[[], object], warmup: int = 2, repeats: int = 7) -> float:
    for _ in range(warmup):
        fn()
    times: List[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
