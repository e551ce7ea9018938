"""pocketnas eval (an evaluation configuration, or verify, pairs, ijb, cost, compare) and release."""
from __future__ import annotations

import argparse
import os
from typing import List

from ..errors import InputError
from ..outputs import Output
from .argtypes import nonnegative_int, positive_int
from .common import MODEL_HELP, add_eval_output_args, add_model_args, open_embedder
from .io import CommandIO, declare


def _no_config(args: argparse.Namespace) -> None:
    if args.config:
        raise InputError("pocketnas eval: --config goes without a command (pocketnas eval --config NAME --model M)")


def _measured(args: argparse.Namespace):
    """(embedder, the report's meta) for a command that measures a model."""
    import torch

    _no_config(args)
    torch.set_num_threads(args.threads)
    embedder = open_embedder(args)
    meta = {"model": embedder.name, "input_norm": embedder.input_norm, "threads": args.threads,
            "engine": embedder.engine, "device": str(getattr(embedder, "device", "cpu"))}
    return embedder, meta


def _report(args: argparse.Namespace, embedder, results, curves, meta) -> int:
    """The cost (with --cost), the ROC/DET pictures and the JSON file of a verification command."""
    from ..evaluation import run

    meta = run.finish_report(embedder, results, curves, meta, cost=args.cost and not args.no_cost,
                             latency=not args.no_latency, threads=args.threads, plots=args.plots,
                             json_path=args.json)
    if meta.get("plots"):
        print(f"plots: {', '.join(meta['plots'])}")
    if args.json:
        print(f"wrote {args.json}")
    return 0


def _tar_line(r) -> str:
    return "TAR at FAR: " + ", ".join(f"{k}: {100 * v:.2f} %" for k, v in r["tar_at_far"].items())


def _cmd_verify_bins(args: argparse.Namespace) -> int:
    from ..evaluation import run

    embedder, meta = _measured(args)
    if args.record_threshold:  # checked before the work: it must be a pocketnas checkpoint
        from ..models.checkpoint import read_checkpoint

        read_checkpoint(args.model)
    results = run.verify_bins(embedder, args.bin, flip=not args.no_flip, batch_size=args.batch_size)
    print(run.format_verify_table(results))
    if args.record_threshold:
        record = run.record_threshold(args.model, results)
        print(f"recorded in {args.model}: cosine threshold {record['cosine_threshold']:.4f} "
              f"({record['set']}, {100 * record['accuracy']:.2f} %)")
    curves = {stem: (r["roc_fpr"], r["roc_tpr"]) for stem, r in results.items()}
    return _report(args, embedder, results, curves, meta)


def _cmd_eval_pairs(args: argparse.Namespace) -> int:
    from ..evaluation import run

    embedder, meta = _measured(args)
    r = run.verify_folder(embedder, args.folder, args.pairs, args.folds, args.seed, flip=not args.no_flip,
                          batch_size=args.batch_size)
    stem = os.path.basename(os.path.normpath(args.folder))
    print(run.format_verify_table({stem: r}))
    print(_tar_line(r))
    curves = {stem: r.pop("roc_full")}
    return _report(args, embedder, {stem: r}, curves, meta)


def _cmd_ijb(args: argparse.Namespace) -> int:
    from ..evaluation import run

    embedder, meta = _measured(args)
    results, curves = run.verify_ijb(embedder, args.root, args.target, flip=not args.no_flip,
                                     batch_size=args.batch_size)
    r = results[args.target.lower()]
    print(f"{args.target}: {r['templates']} templates, {r['pairs']} pairs; AUC {r['auc']:.4f}, "
          f"EER {100 * r['eer']:.2f} %")
    print(_tar_line(r))
    return _report(args, embedder, results, curves, meta)


def _cmd_cost(args: argparse.Namespace) -> int:
    from ..evaluation import run
    from ..evaluation.cost import CostReport, format_cost_table

    embedder, meta = _measured(args)
    cost = run.model_cost(embedder, threads=args.threads)
    fields = {k: v for k, v in cost.items() if k in CostReport.__dataclass_fields__}
    print(format_cost_table([CostReport(**{"input_size": embedder.input_size, **fields})]))
    if args.json:
        run.write_json(args.json, {run.META_KEY: {**meta, "cost": cost}})
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..evaluation import run

    _no_config(args)
    points = run.compare_results(args.results, args.out, args.set)
    for p in points:
        print(f"{p['name']}: {p['set']} {100 * p['accuracy']:.2f} %, {p['params']:,} params, "
              f"{p['mflops']:.1f} MFLOPs")
    print(f"wrote {args.out}")
    if args.json:
        run.write_json(args.json, {"points": points, "plot": args.out})
    return 0


def _plots_output(args: argparse.Namespace) -> List[Output]:
    """An evaluation's ROC and DET pictures: --plots, or a folder beside --json."""
    folder = args.plots or (os.path.splitext(args.json)[0] + "_plots" if args.json else None)
    return [Output(folder, "--plots", ("roc.png", "det.png"))] if folder else []


def _eval_config_names():
    from ..config import packaged_yaml_names

    return packaged_yaml_names("eval")


def _cmd_eval_config(args: argparse.Namespace) -> int:
    from ..evaluation import run
    from ..evaluation.config import load_eval_config, run_eval_config
    from ..models.embedders import load_embedder

    if not args.config:
        raise InputError("pocketnas eval: give --config NAME|FILE --model M, or a command (verify, pairs, ijb, "
                         "cost, compare)")
    if not args.config_model:
        raise InputError("pocketnas eval --config needs --model")
    cfg = load_eval_config(args.config, args.eval_set or [])  # every set checked before the model is loaded
    embedder = load_embedder(args.config_model, arch=args.config_arch, pretrained=args.config_pretrained,
                             input_norm=args.config_input_norm, engine="auto")
    results = run_eval_config(embedder, cfg)
    print(run.format_verify_table({k: r for k, r in results.items() if "accuracy_mean" in r}))
    for name, r in results.items():
        if "tar_at_far" in r:
            print(f"{name}: AUC {r['auc']:.4f}; TAR at FAR: "
                  + ", ".join(f"{k}: {100 * v:.2f} %" for k, v in r["tar_at_far"].items()))
    if args.config_json:
        run.write_json(args.config_json, {**results, run.META_KEY: {"model": embedder.name, "config": args.config,
                                                                     "input_norm": embedder.input_norm}})
        print(f"wrote {args.config_json}")
    return 0


def _cmd_release(args: argparse.Namespace) -> int:
    from ..evaluation.release import release_weights
    from ..evaluation.run import write_json

    r = release_weights(args.model, args.out, args.bin, fp16=not args.fp32)
    for name, v in r["results"].items():
        print(f"{name}: {100 * v['accuracy']:.2f} % +- {100 * v['accuracy_std']:.2f} (no flip), "
              f"{100 * v['accuracy_flip']:.2f} % (flip), AUC {v['auc']:.4f}, EER {100 * v['eer']:.2f} %, "
              f"cosine threshold {v['threshold_flip']:.4f} (flip)")
    print(f"wrote {r['file']} ({r['storage']}, {r['bytes']:,} bytes)"
          + (f"; float32 because {r['why_float32']}" if r["why_float32"] else ""))
    print(f"sha256 {r['sha256']}")
    print("PretrainedCfg(" + ", ".join(f"{k}={v!r}" for k, v in r["pretrained_cfg"].items()) + ", ...)")
    if args.json:
        write_json(args.json, r)
    return 0


def _add_eval_commands(esub: argparse._SubParsersAction) -> None:
    """pocketnas eval verify, pairs, ijb, cost, compare."""
    e = esub.add_parser("verify", help="insightface 10-fold protocol on .bin sets")
    add_model_args(e)
    e.add_argument("--bin", action="append", required=True, help="a .bin set (repeatable)")
    e.add_argument("--record-threshold", action="store_true", help="write the first set's decision threshold into "
                   "the pocketnas checkpoint given as --model (what pocketnas verify decides with)")
    add_eval_output_args(e)
    declare(e, CommandIO(inputs=("model", "bin"), must_exist=("bin",), files=("json",), extra=_plots_output))
    e.set_defaults(func=_cmd_verify_bins)
    e = esub.add_parser("pairs", help="genuine/impostor pairs of FOLDER/<identity>/<image>: EER, TAR@FAR, accuracy")
    e.add_argument("folder", help="aligned faces as FOLDER/<identity>/<image>")
    add_model_args(e)
    e.add_argument("--pairs", type=positive_int, default=600, help="pairs drawn, half genuine (default 600)")
    e.add_argument("--folds", type=positive_int, default=10, help="folds of the protocol (default 10)")
    e.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the pair draw (default 0)")
    add_eval_output_args(e)
    declare(e, CommandIO(inputs=("model", "folder"), must_exist=("folder",), files=("json",), extra=_plots_output))
    e.set_defaults(func=_cmd_eval_pairs)
    e = esub.add_parser("ijb", help="IJB-B/IJB-C 1:1 template verification, TAR at FAR 1e-6..1e-1")
    add_model_args(e)
    e.add_argument("--root", required=True, help="folder with meta/ and loose_crop/")
    e.add_argument("--target", default="IJBC", choices=["IJBB", "IJBC"], help="which benchmark (default IJBC)")
    add_eval_output_args(e)
    declare(e, CommandIO(inputs=("model", "root"), must_exist=("root",), files=("json",), extra=_plots_output))
    e.set_defaults(func=_cmd_ijb)
    e = esub.add_parser("cost", help="parameters, MFLOPs, size, latency and throughput (PyTorch and ONNX Runtime)")
    add_model_args(e)
    e.add_argument("--json", help="write the cost report to this JSON file")
    declare(e, CommandIO(inputs=("model",), files=("json",)))
    e.set_defaults(func=_cmd_cost)
    e = esub.add_parser("compare", help="plot accuracy against parameters and FLOPs for several eval JSON files")
    e.add_argument("results", nargs="+", help="JSON files written by pocketnas eval verify --json")
    e.add_argument("--set", help="which set to plot (default: the first in each file)")
    e.add_argument("--out", default="tradeoff.png", help="the plot to write (default tradeoff.png)")
    e.add_argument("--json", help="also write the plotted points to this JSON file")
    declare(e, CommandIO(inputs=("results",), must_exist=("results",), files=("out", "json")))
    e.set_defaults(func=_cmd_compare)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The subcommands eval, release."""
    s = sub.add_parser("eval", help="verification accuracy (LFW-family .bin, IJB, any folder) and cost",
                       description="pocketnas eval --config NAME|FILE --model M: every set of an evaluation "
                                   "configuration (packaged: " + ", ".join(_eval_config_names()) + "); or one of "
                                   "the commands below")
    s.add_argument("--config", help="an evaluation configuration: a YAML file or a packaged name (eval/)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", dest="eval_set",
                   help="override a value of --config (e.g. root=/data/faces_emore)")
    s.add_argument("--model", dest="config_model", metavar="MODEL", help="(with --config) " + MODEL_HELP)
    s.add_argument("--pretrained", dest="config_pretrained", metavar="FILE",
                   help="(with --config) weights for a registry name")
    s.add_argument("--arch", dest="config_arch", metavar="ARCH",
                   help="(with --config) architecture of a bare backbone.pth")
    s.add_argument("--input-norm", dest="config_input_norm", choices=["arcface", "raw255"],
                   help="(with --config) input normalisation of an ONNX model without pocketnas metadata")
    s.add_argument("--json", dest="config_json", metavar="FILE", help="(with --config) write the results as JSON")
    declare(s, CommandIO(inputs=("config_model",), files=("config_json",)))  # labels: the options' own names
    _add_eval_commands(s.add_subparsers(dest="eval_command"))
    s.set_defaults(func=_cmd_eval_config)

    s = sub.add_parser("release", help="a trained checkpoint -> the weights file to ship (float16 when verification "
                                       "is unchanged), its measured accuracy and sha256")
    s.add_argument("model", help="a pocketnas checkpoint (a run's model.pt)")
    s.add_argument("out", help="the file to write (e.g. pocketnas/assets/weights/pocketnet_s_128_celeba7k.pt)")
    s.add_argument("--bin", action="append", required=True, help=".bin set(s) to measure on (the first is recorded)")
    s.add_argument("--fp32", action="store_true", help="store float32 even where float16 changes nothing")
    s.add_argument("--json", help="write the report there too")
    declare(s, CommandIO(inputs=("model", "bin"), must_exist=("model", "bin"), files=("out", "json")))
    s.set_defaults(func=_cmd_release)
