"""Training-step speed of PocketNetS-128 at batch 32 on 2 CPU threads, side by side in one run.

Modes, each in a fresh subprocess (the allocator setting is process-wide):
  plain      eager float32 NCHW, torch's kernels (use_torch_kernels), glibc defaults: what the original code does
  default    pocketnas's default CPU path: channels_last + glibc mallopt + torch.compile of the backbone
  kd         default path + embedding KD from a teacher computed every step (SFace ONNX by default)
  kd_cached  default path + embedding KD with the teacher's embeddings read from pocketnas's cache
  views_serial   default path + function matching on fresh augmented views of the bundled faces (data loading
                 included): the teacher embeds every view in the training process, before the student's step
  views_overlap  the same with the views and the teacher's embeddings made in 2 DataLoader workers (1 thread
                 each), ahead of the student: how much of the teacher's time the overlap hides

Then what bounds a step, measured in the same run: the machine's copy bandwidth and matrix-product peak, and the
bytes every aten operation of one eager step reads and writes (``plain`` and ``eager_cl``, the default path without
torch.compile, counted under a TorchDispatchMode), against each path's measured step time.

    python bench/train.py [--teacher ../shared/weights/sface_fp32.onnx] [--steps 6]

Prints images/s and ratios; compile time is reported separately (it is paid once per run, and inductor caches it).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import GFLOP_PER_IMAGE, SHARED, print_environment, run_main  # noqa: E402

BATCH = 32


def run_mode(mode: str, steps: int, teacher: str) -> dict:
    import statistics

    import torch
    import torch.nn.functional as F

    import pocketnas
    from pocketnas.engine.process import tune_glibc_malloc
    from pocketnas.engine.teachers import FixedTeacher, TeacherCache, build_fixed_teacher
    from pocketnas.losses import MarginHead, build_distill_loss, build_margin
    from pocketnas.layers.kernels import use_torch_kernels

    torch.set_num_threads(2)
    torch.manual_seed(0)
    fast = mode != "plain"
    if fast:
        tune_glibc_malloc()
    model = pocketnas.create_model("pocketnet_s_128").train()
    if not fast:
        use_torch_kernels(model)  # torch's own kernels (PReLU, depthwise convolution), as the original code
    head = MarginHead(128, 1000, build_margin("arcface"))
    kd_loss = build_distill_loss("embedding", student_dim=128, teacher_dim=128)
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9,
                          weight_decay=5e-4)
    images = torch.randint(0, 256, (BATCH, 3, 112, 112), dtype=torch.uint8)
    labels = torch.randint(0, 1000, (BATCH,))
    index = torch.arange(BATCH)
    flipped = torch.zeros(BATCH, dtype=torch.bool)
    if fast:
        model = model.to(memory_format=torch.channels_last)
        model.compile()
    teach = None
    if mode.startswith("views"):
        return views_mode(mode, steps, teacher, model, head, kd_loss, opt)
    if mode.startswith("kd"):
        embedder = build_fixed_teacher(teacher, input_norm="raw255" if teacher.endswith(".onnx") else None,
                                       threads=2)
        cache = None
        if mode == "kd_cached":
            cache = TeacherCache(tempfile.mkdtemp(), BATCH, int(embedder.embedding_size), {"teacher": teacher})
        teach = FixedTeacher(embedder, cache)

    def step():
        x = pocketnas.data.normalize(images)
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        emb = model(x)
        loss = F.cross_entropy(head(emb, labels), labels)
        if teach is not None:
            loss = loss + kd_loss(emb, teach.embed(images, index, flipped, 0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    step()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"mode": mode, "step_s": med, "images_per_s": BATCH / med, "warmup_s": warm}


def views_mode(mode, steps, teacher, model, head, kd_loss, opt) -> dict:
    """Steps over a real DataLoader of augmented views of the bundled faces, the teacher live on every view."""
    import statistics

    import torch
    import torch.nn.functional as F

    import pocketnas
    from pocketnas.data import FolderDataset, orl_root
    from pocketnas.data.views import FaceViewAugment
    from pocketnas.engine.sampling import EpochBatchSampler, TrainSamples, ViewBatches
    from pocketnas.engine.teachers import LiveTeacher

    faces = FolderDataset(orl_root(), train=False)
    samples = TrainSamples(faces, seed=0, augment=FaceViewAugment())
    norm = "raw255" if teacher.endswith(".onnx") else None
    overlap = mode == "views_overlap"
    live = LiveTeacher(teacher, input_norm=norm, threads=1 if overlap else 2)
    sampler = EpochBatchSampler(len(faces), BATCH, seed=0, max_batches=steps + 2)
    loader = torch.utils.data.DataLoader(samples, batch_sampler=sampler, num_workers=2 if overlap else 0,
                                         collate_fn=ViewBatches(samples, teacher=live),
                                         prefetch_factor=2 if overlap else None)
    labels = torch.randint(0, 1000, (BATCH,))
    times, t_prev, warm = [], time.perf_counter(), 0.0
    for i, (images, _, _, _, t_emb) in enumerate(loader):
        x = pocketnas.data.normalize(images).contiguous(memory_format=torch.channels_last)
        emb = model(x)
        loss = F.cross_entropy(head(emb, labels), labels) + kd_loss(emb, t_emb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        now = time.perf_counter()
        if i < 2:
            warm += now - t_prev
        else:
            times.append(now - t_prev)
        t_prev = now
    med = statistics.median(times)
    return {"mode": mode, "step_s": med, "images_per_s": BATCH / med, "warmup_s": warm}


def traffic_mode(steps: int) -> dict:
    """Memory traffic of one training step on the two eager paths (torch's kernels, NCHW: ``plain``; pocketnas's
    kernels, channels-last: ``eager_cl``, the default path without torch.compile), with each path's measured step
    time beside it, and this machine's copy bandwidth and matrix-product peak measured in the same process."""
    import collections

    import torch
    import torch.nn.functional as F
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    import pocketnas
    from pocketnas.data import normalize
    from pocketnas.engine.process import tune_glibc_malloc
    from pocketnas.layers.kernels import use_torch_kernels
    from pocketnas.losses import MarginHead, build_margin
    from common import copy_bandwidth, matmul_peak, median_time

    class Traffic(TorchDispatchMode):
        """Bytes each aten operation reads and writes (its tensor inputs, each storage once, plus its outputs; views
        move nothing), per operation: what an unfused eager step must move through memory when, as here, a batch's
        feature maps (megabytes each) are far larger than the caches."""

        NO_TRAFFIC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}

        def __init__(self):
            super().__init__()
            self.bytes = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            if not func.is_view and name not in self.NO_TRAFFIC:
                seen, n = set(), 0
                for t in tree_flatten((args, kwargs))[0]:
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                        seen.add(t.untyped_storage().data_ptr())
                        n += t.numel() * t.element_size()
                n += sum(t.numel() * t.element_size() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
                self.bytes[name] += n
            return out

    torch.set_num_threads(2)
    tune_glibc_malloc()
    out = {"mode": "traffic", "bandwidth_gb_s": copy_bandwidth(2), "peak_gflop_s": matmul_peak(2), "paths": {}}
    images = torch.randint(0, 256, (BATCH, 3, 112, 112), dtype=torch.uint8)
    labels = torch.randint(0, 1000, (BATCH,))
    for path in ("plain", "eager_cl"):
        torch.manual_seed(0)
        model = pocketnas.create_model("pocketnet_s_128").train()
        head = MarginHead(128, 1000, build_margin("arcface"))
        if path == "plain":
            use_torch_kernels(model)
        else:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9,
                              weight_decay=5e-4)

        def step():
            x = normalize(images)
            if path == "eager_cl":
                x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(head(model(x), labels), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step_s = median_time(step, warmup=2, repeats=steps)
        traffic = Traffic()
        with traffic:
            step()
        out["paths"][path] = {"step_s": step_s, "bytes": dict(traffic.bytes.most_common())}
    return out


def print_traffic(r: dict) -> None:
    bw, peak = r["bandwidth_gb_s"], r["peak_gflop_s"]
    flops = 3 * GFLOP_PER_IMAGE * BATCH  # forward, input gradient, weight gradient
    print(f"\nwhat bounds a step (batch {BATCH}): this machine now copies {bw:.1f} GB/s (read + write) and multiplies "
          f"matrices at {peak:.0f} GFLOP/s; a step's {flops:.0f} GFLOP take {flops / peak:.2f} s at that peak")
    print(f"{'eager path':<12}{'GB moved':>10}{'at copy bandwidth':>19}{'measured':>10}{'memory bound / measured':>25}")
    for path, p in r["paths"].items():
        gb = sum(p["bytes"].values()) / 1e9
        print(f"{path:<12}{gb:>10.1f}{gb / bw:>17.2f} s{p['step_s']:>8.2f} s{gb / bw / p['step_s']:>24.0%}")
    p = r["paths"]["eager_cl"]
    total = sum(p["bytes"].values())
    print("the operations that move the most bytes in eager_cl: " + ", ".join(
        f"{name} {n / 1e9:.1f} GB ({n / total:.0%})" for name, n in list(p["bytes"].items())[:8]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--teacher", default=os.path.join(SHARED, "weights", "sface_fp32.onnx"))
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        result = traffic_mode(args.steps) if args.mode == "traffic" else run_mode(args.mode, args.steps, args.teacher)
        print(json.dumps(result))
        return
    print_environment()
    results = {}
    for mode in ("plain", "default", "kd", "kd_cached", "views_serial", "views_overlap"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--steps", str(args.steps),
                              "--teacher", args.teacher], capture_output=True, text=True)
        if out.returncode:
            print(f"{mode}: failed\n{out.stderr[-2000:]}")
            continue
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    traffic = subprocess.run([sys.executable, __file__, "--mode", "traffic", "--steps", str(args.steps)],
                             capture_output=True, text=True)
    base = results["plain"]["images_per_s"]
    print(f"\nPocketNetS-128 training step, batch {BATCH}, 2 threads (median of {args.steps} steps after 2 warm-up)")
    print(f"{'mode':<12}{'s/step':>9}{'images/s':>10}{'vs plain':>10}{'warm-up s':>11}")
    for mode, r in results.items():
        print(f"{mode:<12}{r['step_s']:>9.3f}{r['images_per_s']:>10.1f}{r['images_per_s'] / base:>9.2f}x"
              f"{r['warmup_s']:>11.1f}")
    if "default" in results and "kd" in results and "kd_cached" in results:
        d = results["default"]["step_s"]
        print(f"\nKD overhead per step: {results['kd']['step_s'] - d:+.3f} s computing the teacher, "
              f"{results['kd_cached']['step_s'] - d:+.3f} s with the cache")
    if "views_serial" in results and "views_overlap" in results:
        ser, ovl = results["views_serial"]["step_s"], results["views_overlap"]["step_s"]
        print(f"function matching (fresh views, live teacher): serial {ser:.3f} s/step, overlapped {ovl:.3f} s/step: "
              f"{ser / ovl:.2f}x; the teacher's share hidden by the overlap: "
              f"{max(0.0, ser - ovl) / max(1e-9, ser - results['default']['step_s']):.0%}")
    print(f"default path / plain eager: {results['default']['images_per_s'] / base:.2f}x (issue 17's target: "
          f">= 2.7x); the original code: about 12 images/s on this kind of machine")
    if traffic.returncode:
        print(f"traffic: failed\n{traffic.stderr[-2000:]}")
    else:
        t = json.loads(traffic.stdout.strip().splitlines()[-1])
        flops = 3 * GFLOP_PER_IMAGE
        print("fraction of the matrix-product peak: " + ", ".join(
            f"{mode} {r['images_per_s'] * flops / t['peak_gflop_s']:.1%}" for mode, r in results.items()))
        print_traffic(t)


if __name__ == "__main__":
    run_main(main)
