"""pocketnas models, info, genotype: what the registry, a model or a genotype holds."""
from __future__ import annotations

import argparse
import os

from ..atomic import atomic_write, atomic_write_json
from ..outputs import Output
from .argtypes import positive_int
from .common import CELL_PNGS
from .io import CommandIO, declare


def _cmd_models(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.cost import count_parameters
    from ..models import create_model, list_models, model_cfg

    rows = [("name", "family", "emb", "params", "pretrained", "description")]
    for name in list_models(args.pattern):
        cfg = model_cfg(name)
        with torch.device("meta"):
            params = count_parameters(create_model(name))
        pre = cfg.pretrained
        weights = "-" if pre is None else (f"yes: LFW {100 * pre.lfw_accuracy:.2f} %" if pre.lfw_accuracy else "yes")
        rows.append((name, cfg.family, str(cfg.embedding_size), f"{params:,}", weights, cfg.description))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
    if any(model_cfg(n).pretrained for n in list_models(args.pattern)):
        print("pretrained: weights inside the package, create_model(name, pretrained=True); LFW: 10-fold, no flip, "
              "trained on CelebA (research use only), not the paper's MS1MV2 figures")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from ..evaluation.cost import cost_report, format_cost_table
    from ..models import load_model
    from ..nas.cell_diagram import draw_genotype

    model = load_model(args.model, args.arch)
    name = getattr(model, "pocketnas_arch", args.model)
    report = cost_report(model, name, latency=not args.no_latency, threads=args.threads)
    print(format_cost_table([report]))
    result = report.as_dict()
    genotype = getattr(model, "genotype", None)
    if genotype is not None:
        out = args.out or os.path.join("pocketnas_info", name)
        if not args.out:  # the default folder is known only now: the same rule as a named one
            from ..outputs import check_outputs

            check_outputs([Output(out, "--out (default)", CELL_PNGS)], [], overwrite=args.overwrite)
        result["cells"] = draw_genotype(genotype, out, "", name)
        print(f"genotype: {genotype}")
        print(f"cell diagrams: {', '.join(result['cells'])}")
    if args.json:
        atomic_write_json(args.json, result, sort_keys=False)
    return 0


def _cmd_genotype(args: argparse.Namespace) -> int:
    from ..nas.cell_diagram import draw_genotype
    from ..genotype import get_genotype

    genotype = get_genotype(args.spec).validate()
    if args.compare:
        from ..genotype import genotype_agreement

        other = get_genotype(args.compare).validate()
        agreement = genotype_agreement(genotype, other)
        print(f"{'cell':<8}{'same edges':>12}{'same inputs':>13}{'same ops':>10}   "
              f"({args.spec} against {args.compare})")
        for cell, r in agreement.items():
            print(f"{cell:<8}{r['edges']:>12.0%}{r['inputs']:>13.0%}{r['ops']:>10.0%}")
        if args.json:
            atomic_write_json(args.json, agreement, sort_keys=False)
        return 0
    print(genotype.to_json() if args.format == "json" else genotype.to_legacy())
    if args.json:
        atomic_write(args.json, genotype.to_json() + "\n")
    if args.draw:
        for p in draw_genotype(genotype, args.draw):
            print(f"wrote {p}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The subcommands models, info, genotype."""
    s = sub.add_parser("models", help="list the model registry")
    s.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'pocketnet*'")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser("info", help="cost (params, MFLOPs, size, latency) and cells of a model or checkpoint")
    s.add_argument("model", help="registry name, pocketnas checkpoint, or a bare backbone.pth (with --arch)")
    s.add_argument("--arch", help="architecture of a bare state dict (e.g. an original release backbone.pth)")
    s.add_argument("--out", help="folder for the cell diagrams (default pocketnas_info/NAME)")
    s.add_argument("--threads", type=positive_int, default=2, help="CPU threads for the latency measurement "
                                                                  "(default 2)")
    s.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    s.add_argument("--json", help="also write the figures to this JSON file")
    declare(s, CommandIO(inputs=("model",), files=("json",), folders=(("out", CELL_PNGS),)))
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("genotype", help="validate, convert and draw a genotype (name, .json, or legacy string)")
    s.add_argument("spec", help="a published name (e.g. pocketnet_casia), a genotype.json or a legacy string")
    s.add_argument("--format", choices=["json", "legacy"], default="json",
                   help="how to print it: pocketnas's JSON (default) or the original code's Genotype(...) string")
    s.add_argument("--json", help="write it (with --compare: the figures) as JSON to this file")
    s.add_argument("--draw", help="write normal.png and reduce.png into this folder")
    s.add_argument("--compare", metavar="OTHER", help="print how far OTHER differs from it (shared edges, inputs, "
                   "operations per cell; --json writes the figures) instead of printing it")
    declare(s, CommandIO(inputs=("spec", "compare"), files=("json",), folders=(("draw", CELL_PNGS),)))
    s.set_defaults(func=_cmd_genotype)
