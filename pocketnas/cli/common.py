"""What several commands share: the model arguments, evaluation outputs, help texts and output names."""
from __future__ import annotations

import argparse
import os

from .argtypes import positive_int

CELL_PNGS = ("normal.png", "reduce.png")
RUN_OVERWRITE_HELP = "replace a previous run in OUT (what pocketnas wrote there)"
PACK_FILES = ("train.rec", "train.idx", "property", "identities.txt")

MODEL_HELP = "registry name, pocketnas checkpoint, backbone.pth (with --arch) or .onnx file"

PRECISION_HELP = ("numeric precision of the network's forward pass: auto (default: bf16, or fp16 without bf16, on "
                  "CUDA; fp32 on the CPU, where bf16 measured no faster, docs/performance.md), fp32, bf16, fp16 "
                  "(CUDA); weights, optimiser state, margin and losses stay float32; a resumed run keeps its own")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--pretrained", help="weights for a registry name")
    p.add_argument("--arch", help="architecture of a bare backbone.pth")
    p.add_argument("--input-norm", choices=["arcface", "raw255"],
                   help="input normalisation of an ONNX model without pocketnas metadata")
    p.add_argument("--threads", type=positive_int, default=max(1, os.cpu_count() or 1),
                   help="CPU threads (default: the CPU count)")
    p.add_argument("--device", default="auto", help="where a PyTorch model embeds: auto (the first CUDA device when "
                   "there is one, else the CPU), cpu, cuda, cuda:N")


def add_eval_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-flip", action="store_true", help="embed the image only, not also its mirror")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images embedded at once (default 64)")
    p.add_argument("--json", help="write every figure to this JSON file")
    p.add_argument("--plots", help="folder for roc.png and det.png (default: beside --json)")
    p.add_argument("--cost", action="store_true", help="add the model's cost (parameters, MFLOPs, size, and "
                   "latency unless --no-latency: about a minute more) to the report and the JSON file "
                   "(what eval compare plots)")
    p.add_argument("--no-cost", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for scripts
    p.add_argument("--no-latency", action="store_true", help="cost report without timings")
    p.add_argument("--engine", choices=["auto", "torch", "onnxruntime"], default="auto",
                   help="what embeds a PyTorch model: auto (ONNX Runtime on the CPU when installed, exported in "
                        "memory and checked against PyTorch on the first batch; else PyTorch), torch, onnxruntime")


def open_embedder(args: argparse.Namespace):
    from ..config import check_device, resolve_device
    from ..models.embedders import load_embedder

    device = getattr(args, "device", "cpu")
    check_device(device, "--device")  # before the model is read: a CUDA device this machine lacks is refused
    device = resolve_device(device)
    return load_embedder(args.model, arch=args.arch, pretrained=args.pretrained, input_norm=args.input_norm,
                         device=device, threads=args.threads, engine=getattr(args, "engine", "torch"))
