"""Training-step speed of PocketNetS-128 at batch 32 on 2 CPU threads, side by side in one run.

Modes, each in a fresh subprocess (the allocator setting is process-wide):
  plain          eager float32 NCHW, torch's kernels (use_torch_kernels), glibc defaults: what the original code does
  eager_cl       float32 channels_last, pocketnas's kernels, glibc mallopt, eager (the default without compile)
  default        pocketnas's default CPU path: channels_last + glibc mallopt + torch.compile of the backbone, float32
                 (precision auto on the CPU)
  bf16_eager     eager_cl with the backbone's forward under bf16 autocast (precision=bf16; margin and loss float32)
  bf16_compiled  default with the backbone's forward under bf16 autocast
  kd             default path + embedding KD from a teacher computed every step (SFace ONNX by default)
  kd_cached      default path + embedding KD with the teacher's embeddings read from pocketnas's cache
  views_nokd     default path on a DataLoader (2 workers) of augmented views of the bundled faces from a bank of 2
                 per image, no distillation: the baseline of the function-matching rows
  views_bank     the same with function matching, the teacher's embeddings read from a teacher bank built before
                 the run (pocketnas teacher-bank; its build is not timed)
  views_serial   function matching on fresh augmented views: the teacher embeds every view in the training
                 process, before the student's step
  views_overlap  the same with the views and the teacher's embeddings made in 2 DataLoader workers (1 thread
                 each), ahead of the student: how much of the teacher's time the overlap hides

Then what bounds a step, measured in the same run: the machine's copy bandwidth and matrix-product peak, and the
bytes every aten operation of one eager step reads and writes (``plain`` and ``eager_cl``, the default path without
torch.compile, counted under a TorchDispatchMode), against each path's measured step time; and, with
``--profile-bf16``, the operations of one bf16 eager step that take the most time against the same in float32.

    python bench/train.py [--teacher ../shared/weights/sface_fp32.onnx] [--steps 6] [--profile-bf16]

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
BANK_VIEWS = 2
MODES = ("plain", "eager_cl", "default", "bf16_eager", "bf16_compiled", "kd", "kd_cached", "views_nokd",
         "views_bank", "views_serial", "views_overlap")


def run_mode(mode: str, steps: int, teacher: str, bank: str = "") -> dict:
    import statistics

    import torch
    import torch.nn.functional as F

    import pocketnas
    from pocketnas.engine.process import tune_glibc_malloc
    from pocketnas.engine.teachers import FixedTeacher, TeacherCache, build_fixed_teacher
    from pocketnas.losses import MarginHead, build_distill_loss, build_margin
    from pocketnas.layers.kernels import use_torch_kernels

    from pocketnas.engine.precision import autocast

    torch.set_num_threads(2)
    torch.manual_seed(0)
    fast = mode != "plain"
    precision = "bf16" if mode.startswith("bf16") else "fp32"
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
        if mode not in ("eager_cl", "bf16_eager"):
            model.compile()
    teach = None
    if mode.startswith("views"):
        return views_mode(mode, steps, teacher, model, head, kd_loss, opt, bank)
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
        with autocast(precision, x.device):  # as the trainer: the backbone alone, margin and loss in float32
            emb = model(x)
        emb = emb.float()
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


def views_mode(mode, steps, teacher, model, head, kd_loss, opt, bank_dir="") -> dict:
    """Steps over a real DataLoader of augmented views of the bundled faces: the teacher live on every view
    (``views_serial``, ``views_overlap``), read from a teacher bank (``views_bank``) or absent (``views_nokd``)."""
    import statistics

    import torch
    import torch.nn.functional as F

    import pocketnas
    from pocketnas.data import FolderDataset, orl_root
    from pocketnas.data.views import FaceViewAugment
    from pocketnas.engine.sampling import EpochBatchSampler, TrainSamples, ViewBatches
    from pocketnas.engine.teachers import LiveTeacher

    from pocketnas.engine.teacher_bank import TeacherBank
    from common import median_time

    faces = FolderDataset(orl_root(), train=False)
    banked = mode in ("views_bank", "views_nokd")
    samples = TrainSamples(faces, seed=0, augment=FaceViewAugment(), view_bank=BANK_VIEWS if banked else 0)
    norm = "raw255" if teacher.endswith(".onnx") else None
    workers = 0 if mode == "views_serial" else 2  # the trainer's default: 2 DataLoader workers
    live = None if banked else LiveTeacher(teacher, input_norm=norm, threads=1 if workers else 2)
    bank = TeacherBank(bank_dir) if mode == "views_bank" else None
    # warm-up: 2 steps, plus as many as the workers hold ready (2 each) after compiling, so that the timed steps
    # measure the steady state, not batches prefetched while the first step compiled
    warm_steps = 2 + 2 * workers
    sampler = EpochBatchSampler(len(faces), BATCH, seed=0)
    loader = torch.utils.data.DataLoader(samples, batch_sampler=sampler, num_workers=workers,
                                         collate_fn=ViewBatches(samples, teacher=live), persistent_workers=workers > 0,
                                         prefetch_factor=2 if workers else None)

    def batches():  # as many epochs of the 400 faces (12 batches each) as the steps need
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            samples.set_epoch(epoch)
            yield from loader
            epoch += 1

    labels = torch.randint(0, 1000, (BATCH,))
    times, t_prev, warm = [], time.perf_counter(), 0.0
    for i, (images, _, index, view, t_emb) in zip(range(steps + warm_steps), batches()):
        x = pocketnas.data.normalize(images).contiguous(memory_format=torch.channels_last)
        emb = model(x)
        loss = F.cross_entropy(head(emb, labels), labels)
        if bank is not None:
            t_emb = bank.embed(images, index, view, i)
        if mode != "views_nokd":
            loss = loss + kd_loss(emb, t_emb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        now = time.perf_counter()
        if i < warm_steps:
            warm += now - t_prev
        else:
            times.append(now - t_prev)
        t_prev = now
    med = statistics.median(times)
    out = {"mode": mode, "step_s": med, "images_per_s": BATCH / med, "warmup_s": warm}
    if bank is not None:  # what reading the bank adds to a step, alone: the lookup and the KD loss's two passes
        emb = emb.detach().requires_grad_()

        def extra():
            kd_loss(emb, bank.embed(images, index, view, 0)).backward()

        out["bank_extra_s"] = median_time(extra, warmup=3, repeats=50)
    return out


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


def profile_mode(precision: str, steps: int) -> dict:
    """Self CPU time per aten operation over ``steps`` eager channels-last steps at ``precision`` (torch.profiler):
    where a bf16 step spends the time a float32 step does not."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    import pocketnas
    from pocketnas.engine.precision import autocast
    from pocketnas.engine.process import tune_glibc_malloc
    from pocketnas.losses import MarginHead, build_margin

    torch.set_num_threads(2)
    tune_glibc_malloc()
    torch.manual_seed(0)
    model = pocketnas.create_model("pocketnet_s_128").train().to(memory_format=torch.channels_last)
    head = MarginHead(128, 1000, build_margin("arcface"))
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    x = torch.randn(BATCH, 3, 112, 112).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (BATCH,))

    def step():
        with autocast(precision, x.device):
            emb = model(x)
        loss = F.cross_entropy(head(emb.float(), labels), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    ops = {e.key: e.self_cpu_time_total / 1e6 / steps for e in events}
    calls = sum(e.count for e in events) / steps
    return {"mode": f"profile_{precision}", "total_s": sum(ops.values()), "calls": calls,
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])[:40])}


def print_profiles(p32: dict, p16: dict) -> None:
    print(f"\nprofile of one eager channels-last step (torch.profiler, self CPU time of every operation): float32 "
          f"{p32['total_s']:.2f} s in {p32['calls']:.0f} calls, bf16 autocast {p16['total_s']:.2f} s in "
          f"{p16['calls']:.0f} calls; the operations that changed most:")
    print(f"{'operation':<44}{'fp32 s':>9}{'bf16 s':>9}{'bf16 - fp32':>13}")
    names = sorted(set(p32["ops"]) | set(p16["ops"]),
                   key=lambda n: -abs(p16["ops"].get(n, 0) - p32["ops"].get(n, 0)))
    for name in names[:14]:
        a, b = p32["ops"].get(name, 0.0), p16["ops"].get(name, 0.0)
        print(f"{name[:43]:<44}{a:>9.3f}{b:>9.3f}{b - a:>+12.3f}")


def _subprocess(mode: str, args, bank: str = "") -> dict:
    out = subprocess.run([sys.executable, __file__, "--mode", mode, "--steps", str(args.steps),
                          "--teacher", args.teacher, "--bank", bank], capture_output=True, text=True)
    if out.returncode:
        print(f"{mode}: failed\n{out.stderr[-2000:]}")
        return {}
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_bench_bank(teacher: str) -> str:
    """A teacher bank of the bundled faces (BANK_VIEWS views each), built before the timed modes."""
    from pocketnas.data import orl_root
    from pocketnas.engine.teacher_bank import build_teacher_bank

    folder = tempfile.mkdtemp(prefix="bench_bank_")
    t = time.perf_counter()
    build_teacher_bank(folder, orl_root(), teacher, views=BANK_VIEWS, view_seed=0,
                       teacher_input_norm="raw255" if teacher.endswith(".onnx") else None, workers=2, threads=2,
                       progress=False)
    print(f"teacher bank of the 400 bundled faces x {BANK_VIEWS} views built in {time.perf_counter() - t:.1f} s "
          f"(not timed below)")
    return folder


def ratio_lines(results: dict) -> None:
    def step(mode):
        return results[mode]["step_s"] if mode in results else float("nan")

    fastest = min(("plain", "eager_cl", "bf16_eager", "bf16_compiled"), key=step)
    print(f"\ndefault path (float32, compiled) / the fastest other path ({fastest}): "
          f"{step(fastest) / step('default'):.2f}x (target >= 1.00x)")
    print(f"bf16 autocast / float32: eager {step('eager_cl') / step('bf16_eager'):.2f}x, compiled "
          f"{step('default') / step('bf16_compiled'):.2f}x (> 1: bf16 faster)")
    if "default" in results and "kd" in results and "kd_cached" in results:
        d = step("default")
        print(f"KD overhead per step: {step('kd') - d:+.3f} s computing the teacher, "
              f"{step('kd_cached') - d:+.3f} s with the cache")
    if "bank_extra_s" in results.get("views_bank", {}):
        extra = results["views_bank"]["bank_extra_s"]
        print(f"the bank's own cost per step (lookup + the KD loss forward and backward, timed alone): "
              f"{1000 * extra:.2f} ms, {extra / step('views_nokd'):.2%} of a step without distillation")
    base = step("views_nokd")
    print(f"function matching, speed against the same views without distillation: from the bank "
          f"{base / step('views_bank'):.2f}x (target >= 0.90x), teacher live in the workers "
          f"{base / step('views_overlap'):.2f}x, teacher live in the training process "
          f"{base / step('views_serial'):.2f}x")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--teacher", default=os.path.join(SHARED, "weights", "sface_fp32.onnx"))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--profile-bf16", action="store_true", help="also profile one bf16 and one float32 eager step")
    p.add_argument("--no-traffic", action="store_true", help="skip the memory-traffic count")
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--bank", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        if args.mode == "traffic":
            result = traffic_mode(args.steps)
        elif args.mode.startswith("profile_"):
            result = profile_mode(args.mode.split("_", 1)[1], args.steps)
        else:
            result = run_mode(args.mode, args.steps, args.teacher, args.bank)
        print(json.dumps(result))
        return
    print_environment()
    bank = build_bench_bank(args.teacher) if "views_bank" in args.modes else ""
    results = {}
    for mode in args.modes:
        r = _subprocess(mode, args, bank)
        if r:
            results[mode] = r
    base = results["plain"]["images_per_s"] if "plain" in results else float("nan")
    print(f"\nPocketNetS-128 training step, batch {BATCH}, 2 threads (median of {args.steps} steps after a warm-up of "
          f"2, and of 6 where 2 DataLoader workers hold batches ready)")
    print(f"{'mode':<15}{'s/step':>9}{'images/s':>10}{'vs plain':>10}{'warm-up s':>11}")
    for mode, r in results.items():
        print(f"{mode:<15}{r['step_s']:>9.3f}{r['images_per_s']:>10.1f}{r['images_per_s'] / base:>9.2f}x"
              f"{r['warmup_s']:>11.1f}")
    ratio_lines(results)
    if args.profile_bf16:
        p32, p16 = _subprocess("profile_fp32", args), _subprocess("profile_bf16", args)
        if p32 and p16:
            print_profiles(p32, p16)
    if args.no_traffic:
        return
    traffic = subprocess.run([sys.executable, __file__, "--mode", "traffic", "--steps", str(args.steps)],
                             capture_output=True, text=True)
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
