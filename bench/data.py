"""Is data loading ever what a training step waits for?

Measures, side by side on this machine: decode + transform throughput of RecordDataset over celeba295 for 0, 1
and 2 DataLoader workers; the images/s a PocketNetS-128 training step (batch 32, normalised-linear classifier head +
cross-entropy, SGD) consumes; the ratio (target >= 4x); and the step rate when the loader feeds it for real, against
pre-loaded batches.

    python bench/data.py [--data ../shared/data/celeba295] [--batches 40] [--steps 6]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SHARED, median_time, print_environment, run_main  # noqa: E402

import pocketnas  # noqa: E402
from pocketnas.data import RecordDataset  # noqa: E402


def loader_throughput(ds, workers: int, batches: int, batch_size: int = 32) -> float:
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)  # start-up (worker spawn) is not throughput
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        x, _ = next(it)
        n += len(x)
    return n / (time.perf_counter() - t0)


def make_step(num_classes: int):
    model = pocketnas.create_model("pocketnet_s_128").train()
    head = torch.nn.Parameter(torch.randn(num_classes, 128) * 0.01)
    opt = torch.optim.SGD(list(model.parameters()) + [head], lr=0.1, momentum=0.9)

    def step(x, y):
        logits = F.linear(F.normalize(model(x)), F.normalize(head)) * 64.0
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=os.path.join(SHARED, "data", "celeba295"))
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print_environment()
    ds = RecordDataset(args.data, train=True)
    print(f"data: {args.data}: {len(ds)} images, {ds.num_classes} identities")

    rates = {w: loader_throughput(ds, w, args.batches) for w in (0, 1, 2)}
    step = make_step(ds.num_classes)
    x = torch.randn(32, 3, 112, 112)
    y = torch.randint(0, ds.num_classes, (32,))
    step_time = median_time(lambda: step(x, y), warmup=2, repeats=args.steps)
    consumption = 32 / step_time

    loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=1, persistent_workers=True, prefetch_factor=4)
    it = iter(loader)
    step(*next(it))
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(*next(it))
    fed = args.steps * 32 / (time.perf_counter() - t0)

    print()
    print(f"{'what':<52}{'images/s':>10}{'ratio':>10}")
    for w, r in rates.items():
        print(f"{'decode + flip + normalise, ' + str(w) + ' workers':<52}{r:>10.0f}{r / consumption:>9.1f}x")
    print(f"{'PocketNetS-128 train step, batch 32 (pre-loaded)':<52}{consumption:>10.1f}{1.0:>9.1f}x")
    print(f"{'PocketNetS-128 train step fed by 1 loader worker':<52}{fed:>10.1f}{fed / consumption:>9.2f}x")
    best = max(rates.values())
    print(f"\nloader / step consumption: {rates[0] / consumption:.0f}x in-process, {best / consumption:.0f}x best "
          f"(target >= 4x); a real-data step runs at {fed / consumption:.2f}x the pre-loaded step rate")


if __name__ == "__main__":
    run_main(main)
