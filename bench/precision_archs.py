"""bf16 autocast against float32, one training step per network family, side by side (where bf16 pays on this
CPU and where it does not).

    python bench/precision_archs.py [--batch 64] [--steps 3] [--archs iresnet50:32x64 pocketnet_s_128:112 ...]

Each row: one process-wide thread setting, channels-last, SGD with momentum, the median of ``--steps`` timed
steps after one warm-up, float32 then bf16 autocast around the forward pass (what ``precision: bf16`` does), and
the ratio. Sizes are HEIGHTxWIDTH (or one side).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_environment  # noqa: E402

DEFAULT = ["iresnet50:32x64", "iresnet18:32x64", "mobilefacenet:32x64", "pocketnet_s_128:112"]


def step_seconds(arch: str, hw, batch: int, steps: int, bf16: bool) -> float:
    from pocketnas.models import create_model

    model = create_model(arch, input_size=list(hw)).train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, *hw).contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = model(x)
        y.float().square().mean().backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=DEFAULT, help="ARCH:HxW or ARCH:SIDE")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print_environment()
    print(f"batch {args.batch}, {args.steps} timed steps after one warm-up, {args.threads} threads")
    print("| network | input | fp32 s/step | bf16 s/step | bf16 speed-up |")
    print("|---|---|---|---|---|")
    for spec in args.archs:
        arch, size = spec.split(":")
        hw = tuple(int(v) for v in size.split("x")) if "x" in size else (int(size), int(size))
        fp32 = step_seconds(arch, hw, args.batch, args.steps, False)
        bf16 = step_seconds(arch, hw, args.batch, args.steps, True)
        print(f"| {arch} | {hw[0]}x{hw[1]} | {fp32:.2f} | {bf16:.2f} | {fp32 / bf16:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
