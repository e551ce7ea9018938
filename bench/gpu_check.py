"""The GPU path in one prepared run (issue 17, item 4): what a lent GPU must check and measure, each check kept
apart so that one failure does not hide the others.

  step       a PocketNetS-128 training step (ArcFace head of 1,000 classes, SGD) at --batch, images/s for
             fp32 NCHW (the reference), fp32 channels_last, AMP (bf16 autocast) channels_last, and AMP with
             torch.compile of the backbone; the first step's loss of every mode against the reference's
  train      `pocketnas train` under torchrun, one process (NCCL on CUDA, gloo on the CPU), on the bundled faces
  search     a first-order `pocketnas search` under torchrun, one process, on the bundled faces
  verify     `pocketnas eval verify` of a small trained network on the bundled ORL pairs on --device and on the CPU
             (torch engine): accuracy and the embeddings' agreement

    python bench/gpu_check.py --out DIR                       # on the lent GPU (device cuda)
    python bench/gpu_check.py --out DIR --device cpu --quick  # a dry run of the script here (no AMP, tiny sizes)

Writes DIR/gpu_check.json and DIR/gpu_check.md; exits 1 when a check failed (its error is in both files).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_step(device_name: str, batch: int, steps: int, compile_on_cpu: bool = True) -> dict:
    import torch
    import torch.nn.functional as F

    import pocketnas
    from pocketnas.losses import MarginHead, build_margin

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    modes = [("fp32_nchw", False, None, False), ("fp32_channels_last", True, None, False)]
    if cuda:
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        modes += [("amp_channels_last", True, amp, False), ("amp_channels_last_compile", True, amp, True)]
    elif compile_on_cpu:  # minutes of inductor compilation on a CPU: the dry run (--quick) leaves it out
        modes += [("fp32_channels_last_compile", True, None, True)]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 112, 112), dtype=torch.uint8, generator=g).to(device)
    labels = torch.randint(0, 1000, (batch,), generator=g).to(device)
    rows = {}
    for name, channels_last, amp_dtype, compiled in modes:
        torch.manual_seed(0)
        model = pocketnas.create_model("pocketnet_s_128").train().to(device)
        head = MarginHead(128, 1000, build_margin("arcface")).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        forward = torch.compile(model) if compiled else model
        opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

        def step():
            x = pocketnas.data.normalize(images)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
                loss = F.cross_entropy(head(forward(x).float(), labels), labels)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            return float(loss)

        t = time.perf_counter()
        first = step()
        step()
        _sync(device)
        warm = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        seconds = (time.perf_counter() - t) / steps
        rows[name] = {"images_per_s": batch / seconds, "step_ms": 1000 * seconds, "warmup_s": warm,
                      "first_loss": first}
    ref = rows["fp32_nchw"]
    for r in rows.values():
        r["vs_fp32_nchw"] = r["images_per_s"] / ref["images_per_s"]
        r["first_loss_rel_diff"] = abs(r["first_loss"] - ref["first_loss"]) / abs(ref["first_loss"])
    return {"batch": batch, "steps": steps, "modes": rows}


def _run(cmd, env=None, timeout=540) -> dict:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": REPO, **(env or {})})
    out = {"cmd": " ".join(cmd), "rc": p.returncode, "seconds": time.perf_counter() - t,
           "tail": (p.stdout + p.stderr)[-3000:]}
    if p.returncode:
        raise RuntimeError(f"exit {p.returncode}: {' '.join(cmd)}\n{out['tail']}")
    return out


def _torchrun(*args) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "pocketnas",
            *args]


def check_train(device: str, work: str, quick: bool) -> dict:
    import yaml

    from pocketnas.data import orl_root

    run = os.path.join(work, "train")
    cfg = os.path.join(work, "train.yaml")
    with open(cfg, "w") as f:
        yaml.safe_dump({"arch": "pocketnet", "model_kwargs": {"channels": 8, "layers": 3, "embedding_size": 64},
                        "device": device, "epochs": 2, "milestones": [2], "batch_size": 32, "workers": 2,
                        "lr_reference_batch": 32, "max_batches_per_epoch": 4 if quick else 40}, f)
    out = _run(_torchrun("train", "--config", cfg, "--data", orl_root(), "--out", run))
    log = open(os.path.join(run, "log.txt")).read()
    assert os.path.isfile(os.path.join(run, "model.pt")), "no model.pt"
    assert "on 1 process(es)" in log, "the run did not start under torch.distributed"
    out["model"] = os.path.join(run, "model.pt")
    out["backend"] = "nccl" if device.startswith("cuda") else "gloo"  # what pocketnas.engine.distributed picks
    return out


def check_search(device: str, work: str, quick: bool) -> dict:
    from pocketnas.data import orl_root

    run = os.path.join(work, "search")
    out = _run(_torchrun("search", "--data", orl_root(), "--out", run, "--set", "order=first",
                         "--set", f"device={device}", "--set", "layers=4", "--set", "channels=8",
                         "--set", "input_size=56", "--set", "batch_size=32", "--set", "epochs=1", "--set", "workers=0",
                         "--set", f"max_batches_per_epoch={2 if quick else 20}"))
    assert os.path.getsize(os.path.join(run, "genotype.json")) > 0, "no genotype.json"
    return out


def check_verify(device: str, model: str, work: str) -> dict:
    from pocketnas.data import orl_root

    bin_path = os.path.join(work, "orl.bin")  # 600 pairs of the bundled faces, made by `pocketnas data pairs`
    _run([sys.executable, "-m", "pocketnas", "data", "pairs", orl_root(), bin_path, "--pairs", "600"])
    res = {}
    for key, where, extra in (("device", device, []), ("cpu_torch", "cpu", ["--engine", "torch"])):
        js = os.path.join(work, f"verify_{key}.json")
        out = _run([sys.executable, "-m", "pocketnas", "eval", "verify", "--model", model, "--bin", bin_path,
                    "--device", where, "--no-latency", "--no-cost", "--json", js, *extra])
        r = json.load(open(js))
        stem = next(k for k in r if not k.startswith("_"))
        res[key] = {"accuracy": r[stem]["accuracy_mean"], "seconds": out["seconds"],
                      "seconds_embed": r[stem]["seconds_embed"], "device": r["_meta"]["device"]}
    a, b = res["device"]["accuracy"], res["cpu_torch"]["accuracy"]
    res["accuracy_difference"] = abs(a - b)
    return res


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of the script")
    p.add_argument("--checks", default="step,train,search,verify")
    args = p.parse_args()
    import torch

    os.makedirs(args.out, exist_ok=True)
    report = {"environment": environment(), "device": args.device, "checks": {}, "failed": []}
    if torch.cuda.is_available():
        report["gpu"] = {"name": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
                         "cuda": torch.version.cuda}
    work = tempfile.mkdtemp(prefix="gpu_check_")
    batch, steps = (8, 2) if args.quick else (args.batch, args.steps)
    checks = {"step": lambda: check_step(args.device, batch, steps, compile_on_cpu=not args.quick),
              "train": lambda: check_train(args.device, work, args.quick),
              "search": lambda: check_search(args.device, work, args.quick),
              "verify": lambda: check_verify(args.device, report["checks"]["train"]["model"], work)}
    for name in args.checks.split(","):
        print(f"--- {name}", flush=True)
        try:
            report["checks"][name] = checks[name]()
            print(json.dumps(report["checks"][name], indent=1, default=str)[-2000:], flush=True)
        except Exception:  # noqa: BLE001 - every check runs; the failure is the result
            report["failed"].append(name)
            report["checks"][name] = {"error": traceback.format_exc()[-3000:]}
            print(report["checks"][name]["error"], flush=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(f"# GPU check on {report.get('gpu', {}).get('name', args.device)}\n\n"
                f"torch {report['environment']['torch']}; failed: {', '.join(report['failed']) or 'none'}\n\n")
        step = report["checks"].get("step", {})
        if "modes" in step:
            f.write(f"| training step, batch {step['batch']} | images/s | vs fp32 NCHW | first loss rel. diff |\n"
                    "|---|---|---|---|\n")
            for m, r in step["modes"].items():
                f.write(f"| {m} | {r['images_per_s']:.0f} | {r['vs_fp32_nchw']:.2f}x | "
                        f"{r['first_loss_rel_diff']:.1e} |\n")
        for name in ("train", "search", "verify"):
            c = report["checks"].get(name)
            if c:
                f.write(f"\n## {name}\n\n```\n{json.dumps(c, indent=1, default=str)[:2500]}\n```\n")
    print(f"wrote {args.out}/gpu_check.json; failed: {report['failed'] or 'none'}")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
