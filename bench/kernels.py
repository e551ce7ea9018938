"""pocketnas's four CPU kernels against torch's, forward + backward, side by side in one run.

Each row builds the module twice, with the one switch on and off (``pocketnas.layers.own_kernels``), on the same
channels-last input, and prints both times and their ratio with the torch version (the figures the kernels'
docstrings used to carry belong to one torch build and one machine: they are printed here instead).

    python bench/kernels.py [--batch 32] [--repeats 20]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_time, print_environment, run_main  # noqa: E402


def main() -> None:
    import torch

    from pocketnas.layers.kernels import AvgPool2d, BatchNorm2d, DepthwiseConv2d, PReLU, own_kernels

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    print_environment()
    rows = [("PReLU, 8 ch, 28x28", lambda: PReLU(8), 8, 28),
            ("BatchNorm2d (no affine), 8 ch, 28x28", lambda: BatchNorm2d(8, affine=False), 8, 28),
            ("depthwise 5x5, 8 ch, 28x28", lambda: DepthwiseConv2d(8, 5, 1, 2), 8, 28),
            ("depthwise 7x7, 8 ch, 28x28", lambda: DepthwiseConv2d(8, 7, 1, 3), 8, 28),
            ("avg pool 3x3 s1, 8 ch, 28x28", lambda: AvgPool2d(3, 1, 1, count_include_pad=False), 8, 28),
            ("avg pool 3x3 s1, 8 ch, 56x56", lambda: AvgPool2d(3, 1, 1, count_include_pad=False), 8, 56)]
    print(f"{'module':40s} {'torch ms':>9s} {'own ms':>8s} {'torch/own':>9s}")
    for name, build, c, hw in rows:
        torch.manual_seed(0)
        x = torch.randn(args.batch, c, hw, hw).contiguous(memory_format=torch.channels_last).requires_grad_()
        g = torch.randn_like(x)
        times = []
        for enabled in (False, True):
            with own_kernels(enabled):
                m = build().train()

            def step():
                x.grad = None
                m(x).backward(g)

            times.append(median_time(step, warmup=3, repeats=args.repeats))
        print(f"{name:40s} {1e3 * times[0]:9.3f} {1e3 * times[1]:8.3f} {times[0] / times[1]:9.2f}x")


if __name__ == "__main__":
    run_main(main)
