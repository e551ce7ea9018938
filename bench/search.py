"""One search step: time and peak memory, side by side, for the plain formulation, pocketnas's default path and
partial channels (k=4), first and second order, at the original configuration and the recommended CPU one.

  plain    every operation of every edge computed (none included), every gradient computed in both steps (as
           pt.darts), torch's kernels throughout (PReLU, depthwise convolution, average pool, BatchNorm), NCHW,
           glibc malloc defaults
  default  none skipped (exact: its output is zero), only the gradients each step uses (alphas in the first-order
           architecture step and the finite-difference passes, with the weights frozen there; weights in the
           weight step), pocketnas's PReLU (same values, faster CPU backward), BatchNorm of narrow channels-last
           maps by matrix products with the edge weight folded in, the depthwise weight gradient past 3x3 and
           large stride-1 average pools as convolutions, channels_last, glibc mallopt
  pc4      default + PC-DARTS partial channels, 1/4 of the channels through the mixed operations

Each measurement runs in a fresh subprocess (peak RSS is per process); synthetic batches, 1000 identities. With
``--rounds R`` the modes of a (config, order) pair run in turn R times (plain, default, ..., plain, default, ...)
and each mode reports its median over the rounds, so a machine that slows down for a minute slows every mode.

    python bench/search.py [--steps 3] [--rounds 1] [--configs original,cpu] [--orders first,second]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_environment, run_main  # noqa: E402

CONFIGS = {
    # the original PocketNet search, as cpu_reference.md measured it (8 cells, 16 channels, batch 16, 112x112)
    "original": dict(layers=8, channels=16, batch=16, size=112),
    # what pocketnas recommends on a 2-core CPU: 56x56 crops, 8 channels, batch 32
    "cpu": dict(layers=8, channels=8, batch=32, size=56),
}


def measure(config: str, mode: str, order: str, steps: int) -> dict:
    import resource
    import time

    import torch

    from pocketnas.engine.process import tune_glibc_malloc
    from pocketnas.nas.architect import Architect
    from pocketnas.layers.kernels import use_torch_kernels
    from pocketnas.engine.search import SearchModel, search_step
    from pocketnas.nas.space import load_space
    from pocketnas.nas.supernet import Supernet

    c = CONFIGS[config]
    torch.set_num_threads(2)
    torch.manual_seed(0)
    if mode != "plain":
        tune_glibc_malloc()
    space = load_space("pocketnet")
    net = Supernet(space, 1000, c["channels"], c["layers"], 3, 128, c["size"], partial_k=4 if mode == "pc4" else 1,
                   skip_none=mode != "plain")
    if mode == "plain":
        use_torch_kernels(net)
    model = SearchModel(net, torch.nn.Linear(128, 1000))
    x = torch.randn(c["batch"], 3, c["size"], c["size"])
    vx = torch.randn(c["batch"], 3, c["size"], c["size"])
    y = torch.randint(0, 1000, (c["batch"],))
    if mode != "plain":
        model = model.to(memory_format=torch.channels_last)
        x, vx = x.contiguous(memory_format=torch.channels_last), vx.contiguous(memory_format=torch.channels_last)
    w_optim = torch.optim.SGD(model.weights(), 0.1, momentum=0.9, weight_decay=3e-4)
    a_optim = torch.optim.Adam(model.alphas(), 1.2e-3, betas=(0.5, 0.999), weight_decay=1e-3)

    def loss_fn(m, a, b):
        return torch.nn.functional.cross_entropy(m.logits(a, b), b)

    arch = Architect(model, loss_fn, 0.9, 3e-4, a_optim, order, only_needed_grads=mode != "plain")
    t0 = time.perf_counter()
    search_step(model, arch, w_optim, x, y, vx, y, 0.1, 5.0)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        search_step(model, arch, w_optim, x, y, vx, y, 0.1, 5.0)
        times.append(time.perf_counter() - t)
    return {"config": config, "mode": mode, "order": order, "step_s": statistics.median(times), "first_s": first,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--configs", default="original,cpu")
    p.add_argument("--orders", default="first,second")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        config, mode, order = args.one.split(":")
        print(json.dumps(measure(config, mode, order, args.steps)))
        return
    print_environment()
    rows = []
    for config in args.configs.split(","):
        for order in args.orders.split(","):
            modes = ("plain", "default", "pc4")
            runs: dict = {mode: [] for mode in modes}
            for _ in range(args.rounds):
                for mode in modes:
                    out = subprocess.run([sys.executable, __file__, "--one", f"{config}:{mode}:{order}", "--steps",
                                          str(args.steps)], capture_output=True, text=True)
                    if out.returncode:
                        print(f"{config} {order} {mode}: failed\n{out.stderr[-1500:]}")
                        continue
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    runs[mode].append(r)
                    print(f"  measured {config:8s} {order:6s} {mode:7s} {r['step_s']:7.2f} s/step  "
                          f"{r['peak_rss_gb']:5.2f} GB", flush=True)
            for mode, done in runs.items():
                if done:
                    rows.append({**done[0], "step_s": statistics.median(r["step_s"] for r in done),
                                 "peak_rss_gb": statistics.median(r["peak_rss_gb"] for r in done)})
    print(f"\n{'config':<10}{'order':<8}{'mode':<9}{'s/step':>8}{'vs plain':>10}{'peak RSS GB':>13}{'vs plain':>10}")
    for r in rows:
        base = next(b for b in rows if b["config"] == r["config"] and b["order"] == r["order"] and b["mode"] == "plain")
        print(f"{r['config']:<10}{r['order']:<8}{r['mode']:<9}{r['step_s']:>8.2f}{base['step_s'] / r['step_s']:>9.2f}x"
              f"{r['peak_rss_gb']:>13.2f}{r['peak_rss_gb'] / base['peak_rss_gb']:>9.2f}x")
    print("\nspeed: plain time / mode time (target: default >= 2x); memory: mode / plain (target: pc4 <= 0.5x)")
    print("reference, the original code here: 9.5 s and 8.6 GB first order, 31 s second order (original config)")


if __name__ == "__main__":
    run_main(main)
