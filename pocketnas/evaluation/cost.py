"""What a network costs: parameters, FLOPs, size on disk (counted in :mod:`pocketnas.models.complexity`), and CPU
latency of the eager network and its ONNX export.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and linear layers as
2 x multiply-adds) with rules added for the layers it leaves out, so that pooling and identity layers are counted
correctly instead of breaking the counter (as the original release's counter did):

* BatchNorm: 2 per output element (scale and shift);
* activations (PReLU, ReLU): 1 per output element;
* 3x3 max/avg pooling: k*k per output element;
* identities, concatenations, reshapes and the element-wise sums that join a cell's edges: 0.

This is the convention under which PocketNet's published costs (Boutros et al., IEEE Access 2022, Table: 587.11
MFLOPs for PocketNetS-128, 1099.02 for PocketNetM-128) are reproduced exactly at 1 x 3 x 112 x 112.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
import torch.nn as nn

from ..models.complexity import FlopCount, count_flops, count_parameters, fp32_size_bytes, model_input_size
from ..image_size import Size, as_hw, recorded

__all__ = ["CostReport", "FlopCount", "cost_report", "count_flops", "count_parameters", "format_cost_table",
           "fp32_size_bytes", "measure_latency", "model_input_size", "onnx_timings"]


def measure_latency(model: nn.Module, batch: int = 1, input_size: Optional[Size] = None, threads: int = 2,
                    warmup: int = 5, repeats: int = 20) -> float:
    """Median wall time (seconds) of a forward pass on the CPU after ``warmup`` untimed passes."""
    size = as_hw(input_size) if input_size else model_input_size(model)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    was_training = model.training
    model.eval()
    x = torch.randn(batch, 3, *size)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    return statistics.median(times)


def onnx_timings(model: nn.Module, threads: int = 2, repeats: int = 20, batch: int = 32) -> Dict[str, float]:
    """Batch-1 latency (ms) and batch-``batch`` throughput (images/s) of ``model`` exported to ONNX and run by
    ONNX Runtime on ``threads`` CPU threads; empty when onnx/onnxruntime are not installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return {}
    import tempfile

    from ..models.export import export_onnx
    from ..onnx_runtime import cpu_session

    size = model_input_size(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, os.path.join(tmp, "model.onnx"))
        session = cpu_session(path, threads)
        x1 = np.random.randn(1, 3, *size).astype(np.float32)
        xb = np.random.randn(batch, 3, *size).astype(np.float32)
        lat = median_seconds(lambda: session.run(None, {"data": x1}), 5, repeats)
        thr = median_seconds(lambda: session.run(None, {"data": xb}), 1, max(3, repeats // 5))
    return {"onnx_latency_ms": 1000 * lat, "onnx_throughput_ips": batch / thr}


def median_seconds(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class CostReport:
    name: str
    params: int
    mflops: Optional[float]
    size_mb: float
    input_size: Union[int, List[int]]  # a side, or [height, width]
    latency_ms: Optional[float] = None
    throughput_ips: Optional[float] = None
    threads: Optional[int] = None
    onnx_latency_ms: Optional[float] = None
    onnx_throughput_ips: Optional[float] = None

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def cost_report(model: nn.Module, name: str = "", latency: bool = True, threads: int = 2,
                repeats: int = 20, throughput: bool = False, onnx: bool = False) -> CostReport:
    """Parameters, MFLOPs, fp32 size; with ``latency`` the PyTorch batch-1 latency (median after warm-up), with
    ``throughput`` images/s at batch 32, with ``onnx`` the same two through ONNX Runtime (when installed)."""
    size = model_input_size(model)
    report = CostReport(name=name or getattr(model, "pocketnas_arch", type(model).__name__),
                        params=count_parameters(model), mflops=count_flops(model, size).mflops,
                        size_mb=fp32_size_bytes(model) / 2 ** 20, input_size=recorded(size))
    if latency or throughput or onnx:
        report.threads = threads
    if latency:
        report.latency_ms = 1000 * measure_latency(model, 1, size, threads=threads, repeats=repeats)
    if throughput:
        t = measure_latency(model, 32, size, threads=threads, warmup=1, repeats=max(3, repeats // 5))
        report.throughput_ips = 32 / t
    if onnx:
        for key, value in onnx_timings(model, threads, repeats).items():
            setattr(report, key, value)
    return report


def format_cost_table(reports) -> str:
    def fmt(v, spec):
        return format(v, spec) if v is not None else "-"

    rows = [("model", "params", "MFLOPs", "size MB (fp32)", "latency ms (b1)", "img/s (b32)", "ORT ms (b1)",
             "ORT img/s (b32)")]
    for r in reports:
        rows.append((r.name, f"{r.params:,}", fmt(r.mflops, ".2f"), f"{r.size_mb:.2f}", fmt(r.latency_ms, ".1f"),
                     fmt(r.throughput_ips, ".1f"), fmt(r.onnx_latency_ms, ".1f"), fmt(r.onnx_throughput_ips, ".1f")))
    used = [i for i in range(len(rows[0])) if i < 4 or any(row[i] != "-" for row in rows[1:])]
    rows = [tuple(row[i] for i in used) for row in rows]
    threads = {r.threads for r in reports if r.threads}
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if threads:
        lines.append(f"(timings: median after warm-up, {', '.join(map(str, sorted(threads)))} CPU thread(s))")
    return "\n".join(lines)
