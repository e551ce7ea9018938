"""Peak memory of a `pocketnas train` run on a small folder of identities, side by side in one run.

Each row runs ``pocketnas train`` in a fresh process on the first 30 people of the bundled ORL faces (300 aligned
112x112 images, what a user's own folder looks like) for a few steps, and samples every 50 ms the memory of the
whole process tree (the training process and any DataLoader workers): the peak of the sum of their proportional
set sizes (PSS, so pages the workers share with their parent are counted once). Rows:

  cpu_celeba295        the recipe a user of a small folder used to be pointed at: batch 64, 2 workers
  batch64_ckpt         the same with grad_checkpointing (each cell recomputed in the backward pass)
  batch64_ckpt_lean    ... and tune_malloc: lean (glibc returns freed buffers at once)
  folder_cpu           the folder recipe (train/folder_cpu.yaml: batch 32, checkpointing, lean, no workers,
                       the shipped weights fine-tuned)

Then what the memory costs in time: bare PocketNetS-128 training steps (forward, backward, SGD) at batch 32 on 2
threads, each combination of grad_checkpointing and glibc mode (speed: tune_malloc true; lean) in a fresh process
(the malloc setting is process-wide), the median of the steps after two warm-up steps, and each process's peak RSS.

    python bench/memory.py [--steps 3] [--rows folder_cpu,cpu_celeba295] [--markdown docs/results/memory.md]

Prints peak GB and ratios against the first row of each table (measure on a quiet machine).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import print_environment, run_main  # noqa: E402

ROWS: Dict[str, Tuple[str, List[str]]] = {
    "cpu_celeba295": ("cpu_celeba295", []),
    "batch64_ckpt": ("cpu_celeba295", ["grad_checkpointing=true"]),
    "batch64_ckpt_lean": ("cpu_celeba295", ["grad_checkpointing=true", "tune_malloc=lean"]),
    "folder_cpu": ("folder_cpu", []),
}


def tree_pids(root: int) -> List[int]:
    """``root`` and its descendants, from /proc's children lists."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return pids


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def faces_folder(root: str, people: int = 30) -> str:
    """The first ``people`` identities of the bundled ORL faces, copied to ``root``/faces."""
    from pocketnas.data.bundled import orl_root

    src, dst = orl_root(), os.path.join(root, "faces")
    names = sorted((d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d))), key=lambda d: int(d[1:]))
    for name in names[:people]:
        shutil.copytree(os.path.join(src, name), os.path.join(dst, name))
    return dst


def measure(recipe: str, sets: List[str], data: str, out: str, steps: int) -> Dict[str, float]:
    cmd = [sys.executable, "-m", "pocketnas", "train", "--config", recipe, "--data", data, "--out", out,
           "--set", f"stop_after_steps={steps}"]
    for s in sets:
        cmd += ["--set", s]
    log = open(out + ".log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(pss_bytes(p) for p in tree_pids(proc.pid)))
        time.sleep(0.05)
    log.close()
    text = open(out + ".log").read()
    if proc.returncode != 0:
        raise SystemExit(f"{recipe} {sets}: exit {proc.returncode}\n{text[-2000:]}")
    return {"peak_pss": peak}


BARE_STEP = """
import json, statistics, sys, time
import torch
from pocketnas.engine.process import MALLOC_MODES, tune_glibc_malloc
from pocketnas.models import create_model
batch, ckpt, mode, steps = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3], int(sys.argv[4])
tune_glibc_malloc(*MALLOC_MODES[mode])
torch.set_num_threads(2)
model = create_model("pocketnet_s_128").to(memory_format=torch.channels_last).train()
model.set_grad_checkpointing(ckpt)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(batch, 3, 112, 112).to(memory_format=torch.channels_last)
times = []
for _ in range(steps + 2):
    start = time.perf_counter()
    model(x).square().mean().backward()
    opt.step()
    opt.zero_grad()
    times.append(time.perf_counter() - start)
with open("/proc/self/status") as f:  # VmHWM: this process's own peak (ru_maxrss carries the parent's over exec)
    peak = int(next(line.split()[1] for line in f if line.startswith("VmHWM:"))) * 1024
print(json.dumps({"step_s": statistics.median(times[2:]), "peak_rss": peak}))
"""


def bare_steps(steps: int, batch: int = 32) -> None:
    print(f"\nbare PocketNetS-128 steps, batch {batch}, 2 threads, median of {steps} after 2 warm-up steps")
    rows = []
    for ckpt in ("0", "1"):
        for mode in ("speed", "lean"):
            out = subprocess.run([sys.executable, "-c", BARE_STEP, str(batch), ckpt, mode, str(steps)],
                                 capture_output=True, text=True, check=True).stdout
            rows.append((ckpt == "1", mode, json.loads(out.strip().splitlines()[-1])))
    base = rows[0][2]
    print("\n| grad_checkpointing | tune_malloc | s/step | vs first | peak RSS (GB) | vs first |")
    print("|---|---|---|---|---|---|")
    for ckpt, mode, r in rows:
        print(f"| {str(ckpt).lower()} | {'true' if mode == 'speed' else mode} | {r['step_s']:.2f} | "
              f"{r['step_s'] / base['step_s']:.2f}x | {r['peak_rss'] / 1e9:.2f} | "
              f"{r['peak_rss'] / base['peak_rss']:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="training steps per row (default 3)")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows (default: {','.join(ROWS)})")
    ap.add_argument("--bare-steps", type=int, default=4, help="timed bare steps per setting (0: skip; default 4)")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {list(ROWS)}")
    print_environment()
    print(f"pocketnas train, {args.steps} steps each, on 300 bundled ORL faces of 30 people; peak PSS of the "
          f"process tree, sampled every 50 ms")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = faces_folder(tmp)
        for row in rows:
            recipe, sets = ROWS[row]
            results[row] = measure(recipe, sets, data, os.path.join(tmp, row), args.steps)
            print(f"  measured {row}", flush=True)
    base = results[rows[0]]["peak_pss"]
    print(f"\n| row | recipe and settings | peak memory (GB) | vs {rows[0]} |")
    print("|---|---|---|---|")
    for row in rows:
        recipe, sets = ROWS[row]
        r = results[row]
        print(f"| {row} | {recipe} {' '.join(sets)} | {r['peak_pss'] / 1e9:.2f} | {r['peak_pss'] / base:.2f}x |")
    if args.bare_steps:
        bare_steps(args.bare_steps)


if __name__ == "__main__":
    run_main(main)
