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

    python bench/memory.py [--steps 3] [--rows folder_cpu,cpu_celeba295] [--markdown docs/results/memory.md]

Prints peak GB and the ratio against the first row, and the seconds of each run's training steps (from its log)
as a hint of what the memory costs in time (measure speed on a quiet machine: bench/train.py).
"""
from __future__ import annotations

import argparse
import os
import re
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
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(pss_bytes(p) for p in tree_pids(proc.pid)))
        time.sleep(0.05)
    wall = time.perf_counter() - start
    log.close()
    text = open(out + ".log").read()
    if proc.returncode != 0:
        raise SystemExit(f"{recipe} {sets}: exit {proc.returncode}\n{text[-2000:]}")
    step_s = [float(x) for x in re.findall(r"([\d.]+)s/step", text)]
    return {"peak_pss": peak, "wall": wall, "step_s": step_s[-1] if step_s else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="training steps per row (default 3)")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows (default: {','.join(ROWS)})")
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
    print(f"\n| row | recipe and settings | peak memory (GB) | vs {rows[0]} | last step (s) |")
    print("|---|---|---|---|---|")
    for row in rows:
        recipe, sets = ROWS[row]
        r = results[row]
        print(f"| {row} | {recipe} {' '.join(sets)} | {r['peak_pss'] / 1e9:.2f} | {r['peak_pss'] / base:.2f}x | "
              f"{r['step_s']:.1f} |")


if __name__ == "__main__":
    run_main(main)
