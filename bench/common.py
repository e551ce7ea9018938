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


# PocketNetS-128's forward at 112x112 in GFLOP, a multiply-add counted as two (587.11 MFLOPs, docs/evaluation.md)
GFLOP_PER_IMAGE = 2 * 0.58711


def matmul_peak(threads: int) -> float:
    """This machine's float32 compute peak as measured now: GFLOP/s of a 2048 x 2048 matrix product on ``threads``
    threads (median of 5), the ceiling every benchmark states its fraction of (the machine's speed drifts)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048 ** 3 / median_time(lambda: a @ b, warmup=1, repeats=5) / 1e9


def copy_bandwidth(threads: int, megabytes: int = 256) -> float:
    """This machine's memory bandwidth as measured now: GB/s of a copy between two ``megabytes`` float32 buffers
    (far past every cache), counting the bytes read and the bytes written (median of 5)."""
    torch.set_num_threads(threads)
    a = torch.ones(megabytes * 2 ** 20 // 4)
    b = torch.empty_like(a)
    return 2 * a.numel() * 4 / median_time(lambda: b.copy_(a), warmup=1, repeats=5) / 1e9


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


def run_main(main: Callable[[], object]) -> None:
    """Run a bench's ``main``; with ``--markdown FILE`` (anywhere in the arguments) its printed output (the
    environment line and the table with its ratios) is also written to FILE as a Markdown page with the command
    that produced it, so the figures in docs/ are generated, not copied by hand (e.g. docs/results/train.md)."""
    import io
    import sys

    argv = sys.argv[1:]
    path = None
    if "--markdown" in argv:
        i = argv.index("--markdown")
        if i + 1 >= len(argv):
            raise SystemExit("--markdown needs a file name")
        path = argv[i + 1]
        sys.argv = [sys.argv[0]] + argv[:i] + argv[i + 2:]
    if path is None:
        main()
        return
    buf = io.StringIO()
    real = sys.stdout
    sys.stdout = _Tee(real, buf)
    try:
        main()
    finally:
        sys.stdout = real
    command = " ".join(["python", os.path.relpath(sys.argv[0])] + sys.argv[1:])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# {os.path.basename(sys.argv[0])}, {time.strftime('%Y-%m-%d %H:%M')}\n\n`{command}`\n\n```\n"
                f"{buf.getvalue().rstrip()}\n```\n")
