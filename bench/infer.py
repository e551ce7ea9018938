"""Batch-1 latency of PocketNetS-128: eager PyTorch float32 against the exported ONNX float32 and int8 (static,
calibrated on the bundled faces), side by side in one run, at 1 and 2 threads.

The ONNX rows: the graph as torch.onnx writes it (PReLU as ONNX ``PRelu``), and as ``pocketnas export`` writes
it (PReLU as the equal ``max(x, a*x)``, see pocketnas.models.export.runtime_friendly), float32 and int8.

    python bench/infer.py [--repeats 50]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_environment, run_main  # noqa: E402


def main() -> None:
    import torch

    import pocketnas
    from pocketnas.compress.deploy import export_checked, face_crops, onnx_file_latency, quantize_int8
    from pocketnas.models.export import export_onnx
    from pocketnas.evaluation.cost import measure_latency
    from pocketnas.models.calibrate import calibrate_batchnorm

    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()
    print_environment()
    torch.manual_seed(0)
    model = pocketnas.create_model("pocketnet_s_128")
    crops = face_crops(None, 128)
    calibrate_batchnorm(model, pocketnas.data.normalize(torch.as_tensor(crops)).split(32))
    model.eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prelu = os.path.join(tmp, "s128.prelu.onnx")
        fp32 = os.path.join(tmp, "s128.onnx")
        int8 = os.path.join(tmp, "s128.int8.onnx")
        export_onnx(model, prelu, fast_prelu=False)
        export_checked(model, fp32, crops[:32])
        quantize_int8(fp32, int8, crops, "arcface", "static")
        for threads in (1, 2):
            eager = 1000 * measure_latency(model, 1, threads=threads, warmup=5, repeats=args.repeats)
            rows.append((threads, "eager PyTorch fp32", eager))
            rows.append((threads, "ONNX Runtime fp32, PRelu", onnx_file_latency(prelu, threads, args.repeats)))
            rows.append((threads, "ONNX Runtime fp32", onnx_file_latency(fp32, threads, args.repeats)))
            rows.append((threads, "ONNX Runtime int8 (static)", onnx_file_latency(int8, threads, args.repeats)))
    print(f"\n{'threads':<9}{'path':<32}{'ms (batch 1)':>14}{'vs eager':>10}")
    for threads, name, ms in rows:
        eager = next(r[2] for r in rows if r[0] == threads and r[1].startswith("eager"))
        print(f"{threads:<9}{name:<32}{ms:>14.2f}{eager / ms:>9.2f}x")
    print("\ntarget: the shipped path (ONNX, int8 where accuracy holds) >= 3x faster than eager float32; the original"
          " code here: eager about 42 ms, ONNX Runtime 17-20 ms")


if __name__ == "__main__":
    run_main(main)
