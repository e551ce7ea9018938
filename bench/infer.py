"""Batch-1 latency of the shipped PocketNetS-128 (its trained weights): eager PyTorch float32 against the exported
ONNX float32 and int8 (static, calibrated on the bundled faces), side by side in one run, at 1 and 2 threads.

The ONNX rows differ in how PReLU is written (pocketnas.models.export.runtime_friendly): as ONNX ``PRelu`` (what
torch.onnx writes), ``elementwise`` (``max(x, a*x)`` or ``relu(x) + a*min(x, 0)``: what ``pocketnas export``
wrote until 2026-12-01), and ``depthwise`` (two 1x1 depthwise convolutions, which keep ONNX Runtime's blocked
NCHWc layout: what it writes now), float32, and the last also int8.

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

    import pocketnas
    from pocketnas.compress.deploy import export_checked, face_crops, onnx_file_latency, quantize_int8
    from pocketnas.models.export import export_onnx
    from pocketnas.evaluation.cost import measure_latency

    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()
    print_environment()
    model = pocketnas.create_model("pocketnet_s_128", pretrained=True).eval()
    crops = face_crops(None, 128)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {form: os.path.join(tmp, f"s128.{form}.onnx") for form in ("onnx", "elementwise")}
        for form, path in files.items():
            export_onnx(model, path, prelu=form)
        fp32 = os.path.join(tmp, "s128.onnx")
        int8 = os.path.join(tmp, "s128.int8.onnx")
        export_checked(model, fp32, crops[:32])  # pocketnas export's file (depthwise PReLU), parity-checked
        quantize_int8(fp32, int8, crops, "arcface", "static")
        for threads in (1, 2):
            eager = 1000 * measure_latency(model, 1, threads=threads, warmup=5, repeats=args.repeats)
            rows.append((threads, "eager PyTorch fp32", eager))
            rows.append((threads, "ONNX fp32, PRelu", onnx_file_latency(files["onnx"], threads, args.repeats)))
            rows.append((threads, "ONNX fp32, elementwise (old)",
                         onnx_file_latency(files["elementwise"], threads, args.repeats)))
            rows.append((threads, "ONNX fp32, depthwise (now)", onnx_file_latency(fp32, threads, args.repeats)))
            rows.append((threads, "ONNX int8 (static), depthwise", onnx_file_latency(int8, threads, args.repeats)))
    print(f"\n{'threads':<9}{'path':<32}{'ms (batch 1)':>14}{'vs eager':>10}{'vs old file':>13}")
    for threads, name, ms in rows:
        eager = next(r[2] for r in rows if r[0] == threads and r[1].startswith("eager"))
        old = next(r[2] for r in rows if r[0] == threads and "(old)" in r[1])
        print(f"{threads:<9}{name:<32}{ms:>14.2f}{eager / ms:>9.2f}x{ms / old:>12.2f}x")
    print("\ntargets: the shipped path (ONNX, int8 where accuracy holds) >= 3x faster than eager float32; the fp32 "
          "file <= 0.75x the old file's time (issue 17); the original code here: eager about 42 ms, ONNX Runtime "
          "17-20 ms")


if __name__ == "__main__":
    run_main(main)
