"""pocketnas prune, export."""
from __future__ import annotations

import argparse
import os
from typing import List

from ..compress.prune import PRUNERS
from ..errors import InputError
from ..outputs import Output
from .argtypes import compression_rate, nonnegative_int, opset
from .common import MODEL_HELP, RUN_OVERWRITE_HELP
from .io import CommandIO, declare


def _cmd_prune(args: argparse.Namespace) -> int:
    from ..compress import run as crun
    from ..models import load_model

    model = load_model(args.model, args.arch, args.pretrained)
    recipe = crun.checkpoint_recipe(args.model) if args.finetune_epochs else None
    head = None
    if args.finetune_epochs and args.head != "none":
        head = args.head or crun.training_checkpoint(args.model)
    if args.sweep:
        methods = args.methods or PRUNERS.names()
        crun.sweep(model, methods, args.rates, args.data, args.out, args.finetune_epochs, args.teacher,
               args.bin, args.set or [], export=not args.no_export, recipe=recipe, head=head,
               overwrite=args.overwrite)
        print(open(os.path.join(args.out, "sweep.md"), encoding="utf-8").read())
        print(f"wrote {os.path.join(args.out, 'sweep.md')}, sweep.json" + (", sweep.png" if args.bin else ""))
        return 0
    if not args.method or args.rate is None:
        raise InputError("give --method and --rate (or --sweep)")
    r = crun.prune_one(model, args.method, args.rate, args.data, args.out, args.finetune_epochs, args.teacher,
                       args.bin, args.set or [], export=not args.no_export, recipe=recipe, head=head,
               overwrite=args.overwrite)

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f} %"

    print(f"{args.method} at rate {args.rate:g}: achieved {r['achieved_rate']:.3f} (counting zeros: "
          f"{r['remaining']:,} of {r['prunable']:,} prunable weights left; whole model {r['model_rate']:.2f}); "
          f"left dense: {', '.join(r['dense'])}")
    print(f"accuracy: before {pct(r['accuracy_before'])}, pruned {pct(r['accuracy_pruned'])}, fine-tuned "
          f"{pct(r['accuracy_finetuned'])}; model: {r['model']}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ..compress import run as crun
    from ..models import load_model

    model = load_model(args.model, args.arch, args.pretrained)
    r = crun.export_model(model, args.format, args.out, args.calib, args.bin, args.int8_mode, args.opset)
    p = r["parity"]
    print(f"wrote {r['path']} ({args.format}); parity with PyTorch on {p.get('images', 64)} face crops: max abs "
          f"diff {p['max_abs_diff']:.2e}, min cosine {p['min_cosine']:.7f}")
    for key in ("fp32", "int8"):
        if key in r:
            c = r[key]
            print(f"  {key}: {c['size_mb']:.2f} MB ({c['gzip_mb']:.2f} gzipped), ONNX Runtime batch 1: "
                  f"{c['latency_ms_1thread']:.1f} ms (1 thread), {c['latency_ms_2threads']:.1f} ms (2 threads)")
    if "int8_vs_fp32" in r:
        print(f"  int8 ({r['int8_mode']}) against PyTorch: mean cosine {r['int8_vs_fp32']['mean_cosine']:.5f}")
    for k, v in r.get("verification", {}).items():
        print(f"  {v['set']} accuracy, {k}: {100 * v['accuracy_mean']:.2f} % +- {100 * v['accuracy_std']:.2f}")
    if args.json:
        from ..evaluation.run import write_json

        write_json(args.json, r)
    return 0


def _int8_sibling(args: argparse.Namespace) -> List[Output]:
    """``export --format onnx-int8`` also keeps the float32 model beside the int8 one."""
    if args.format != "onnx-int8":
        return []
    return [Output(os.path.splitext(args.out)[0] + ".fp32.onnx", "--out (its float32 sibling)")]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The subcommands prune, export."""
    s = sub.add_parser("prune", help="unstructured pruning at a compression rate, fine-tuning, sweeps")
    s.add_argument("--model", required=True, help="pocketnas checkpoint, registry name (--pretrained) or backbone.pth")
    s.add_argument("--arch", help="architecture of a bare backbone.pth")
    s.add_argument("--pretrained", help="weights for a registry name")
    s.add_argument("--method", choices=PRUNERS.names(), help="the pruning method (with --rate)")
    s.add_argument("--rate", type=compression_rate, help="compression rate: prunable parameters / remaining "
                                                          "non-zeros")
    s.add_argument("--data", required=True, help="face data for gradient scores and fine-tuning")
    s.add_argument("--out", required=True, help="run folder (model.pt, report.json; a sweep: sweep.md, .json, .png)")
    s.add_argument("--finetune-epochs", type=nonnegative_int, default=0, help="fine-tuning epochs after pruning, "
                   "the masks held (default 0: none)")
    s.add_argument("--teacher", help="distil from this model while fine-tuning (e.g. the unpruned checkpoint)")
    s.add_argument("--head", help="a training run's checkpoint.pt whose margin head fine-tuning starts from "
                                  "(default: the checkpoint.pt beside --model, if any; 'none': a fresh head)")
    s.add_argument("--bin", help="a .bin set to report verification accuracy on")
    s.add_argument("--sweep", action="store_true", help="every --methods at every --rates, as a table and a plot")
    s.add_argument("--methods", nargs="+", choices=PRUNERS.names(), help="(--sweep) methods to compare (default: all)")
    s.add_argument("--rates", nargs="+", type=compression_rate, default=[2, 4, 8, 16],
                   help="(--sweep) compression rates to compare (default 2 4 8 16)")
    s.add_argument("--no-export", action="store_true", help="skip the ONNX export and its cost")
    s.add_argument("--overwrite", action="store_true", help=RUN_OVERWRITE_HELP)
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="fine-tuning settings (train config keys)")
    declare(s, CommandIO(inputs=("model", "data", "bin", "teacher", "head"), must_exist=("data", "bin"),
                         run_folder="out"), overwrite=False)
    s.set_defaults(func=_cmd_prune)

    s = sub.add_parser("export", help="ONNX (checked against PyTorch on face crops), int8, TorchScript")
    s.add_argument("--model", required=True, help=MODEL_HELP.replace(" or .onnx file", ""))
    s.add_argument("--arch", help="architecture of a bare backbone.pth")
    s.add_argument("--pretrained", help="weights for a registry name")
    s.add_argument("--format", choices=["onnx", "onnx-int8", "torchscript"], default="onnx",
                   help="onnx (default), onnx-int8 (also keeps OUT's .fp32.onnx), torchscript")
    s.add_argument("--out", required=True, help="the file to write")
    s.add_argument("--calib", help="face crops for the parity check and int8 calibration (folder, pack or .bin; "
                   "default: the bundled faces)")
    s.add_argument("--bin", help="report verification accuracy of PyTorch, fp32 and int8 on this .bin")
    s.add_argument("--int8-mode", choices=["static", "dynamic"], default="static",
                   help="(onnx-int8) static: activations calibrated on face crops (default); dynamic")
    s.add_argument("--opset", type=opset, default=17, help="ONNX opset (default 17)")
    s.add_argument("--json", help="also write the report to this JSON file")
    declare(s, CommandIO(inputs=("model", "pretrained", "calib", "bin"), must_exist=("calib", "bin"),
                         files=("out", "json"), extra=_int8_sibling))
    s.set_defaults(func=_cmd_export)
