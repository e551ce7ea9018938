"""The ``pocketnas`` command: argparse subcommands that call the library (no logic of their own)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

logger = logging.getLogger("pocketnas")


def _cmd_models(args: argparse.Namespace) -> int:
    import torch

    from .evaluation.cost import count_parameters
    from .registry import create_model, list_models, model_cfg

    rows = [("name", "family", "emb", "params", "description")]
    for name in list_models(args.pattern):
        cfg = model_cfg(name)
        with torch.device("meta"):
            params = count_parameters(create_model(name))
        rows.append((name, cfg.family, str(cfg.embedding_size), f"{params:,}", cfg.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    return 0


def _build(spec: str, arch: Optional[str]):
    from .models.checkpoint import load
    from .registry import create_model

    if os.path.exists(spec):
        return load(spec, arch=arch)
    return create_model(spec)


def _cmd_info(args: argparse.Namespace) -> int:
    from .evaluation.cost import cost_report, format_cost_table
    from .nas.cell_diagram import draw_genotype

    model = _build(args.model, args.arch)
    name = getattr(model, "pocketnas_arch", args.model)
    report = cost_report(model, name, latency=not args.no_latency, threads=args.threads)
    print(format_cost_table([report]))
    result = report.as_dict()
    genotype = getattr(model, "genotype", None)
    if genotype is not None:
        out = args.out or os.path.join("pocketnas_info", name)
        result["cells"] = draw_genotype(genotype, out, "", name)
        print(f"genotype: {genotype}")
        print(f"cell diagrams: {', '.join(result['cells'])}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


def _cmd_genotype(args: argparse.Namespace) -> int:
    from .nas.cell_diagram import draw_genotype
    from .nas.genotype import get_genotype

    genotype = get_genotype(args.spec).validate()
    print(genotype.to_json() if args.format == "json" else genotype.to_legacy())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(genotype.to_json() + "\n")
    if args.draw:
        for p in draw_genotype(genotype, args.draw):
            print(f"wrote {p}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, models=args.models, threads=args.threads, latency=not args.no_latency)
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "pack":
        from .data.pack import pack_folder

        paths = pack_folder(args.folder, args.out_dir, size=args.size or None, quality=args.quality,
                            workers=args.workers)
        print("\n".join(f"wrote {p}" for p in paths.values()))
    elif args.data_command == "pairs":
        from .data.pack import pairs_from_folder

        info = pairs_from_folder(args.folder, args.out, args.pairs, folds=args.folds, seed=args.seed,
                                 size=args.size or None, workers=args.workers)
        print(f"wrote {info['path']}: {info['pairs']} pairs ({info['genuine']} genuine) in {info['folds']} folds"
              f"{', person-disjoint' if info['person_disjoint_folds'] else ''}")
    else:
        from .data.inspect import inspect_path

        info = inspect_path(args.path, args.out, samples=args.samples)
        print("\n".join(info["summary"]))
        print(f"contact sheet: {info['contact_sheet']}")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(info, f, indent=2)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pocketnas", description="Compact face recognition networks: search, build, "
                                "train, compress, evaluate.")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list the model registry")
    s.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'pocketnet*'")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser("info", help="cost (params, MFLOPs, size, latency) and cells of a model or checkpoint")
    s.add_argument("model", help="registry name, pocketnas checkpoint, or a bare backbone.pth (with --arch)")
    s.add_argument("--arch", help="architecture of a bare state dict (e.g. an original release backbone.pth)")
    s.add_argument("--out", help="folder for the cell diagrams (default pocketnas_info/NAME)")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    s.add_argument("--json", help="also write the figures to this JSON file")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("genotype", help="validate, convert and draw a genotype (name, .json, or legacy string)")
    s.add_argument("spec")
    s.add_argument("--format", choices=["json", "legacy"], default="json")
    s.add_argument("--json", help="write it as JSON to this file")
    s.add_argument("--draw", help="write normal.png and reduce.png into this folder")
    s.set_defaults(func=_cmd_genotype)

    s = sub.add_parser("data", help="pack folders into RecordIO, make pairs .bin files, inspect data")
    dsub = s.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("pack", help="image folder (root/<identity>/<image>) -> train.rec/.idx/property")
    d.add_argument("folder")
    d.add_argument("out_dir")
    d.add_argument("--size", type=int, default=112, help="resize to SIZE x SIZE (0: keep)")
    d.add_argument("--quality", type=int, default=95, help="JPEG quality")
    d.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    d = dsub.add_parser("pairs", help="image folder -> verification pairs .bin (10 folds, seeded)")
    d.add_argument("folder")
    d.add_argument("out")
    d.add_argument("--pairs", type=int, default=600)
    d.add_argument("--folds", type=int, default=10)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--size", type=int, default=112, help="resize to SIZE x SIZE (0: keep)")
    d.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    d = dsub.add_parser("inspect", help="identities, images, per-identity histogram, contact sheet PNG")
    d.add_argument("path", help="a RecordIO folder or .rec, a .bin, or an image folder")
    d.add_argument("--out", help="contact sheet PNG (default NAME_contact.png)")
    d.add_argument("--samples", type=int, default=32)
    d.add_argument("--json")
    s.set_defaults(func=_cmd_data)

    s = sub.add_parser("demo", help="the main job on the bundled ORL faces")
    s.add_argument("--out", default="pocketnas_demo")
    s.add_argument("--models", nargs="+", help="registry names (default: the four PocketNets)")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--no-latency", action="store_true")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from .data.errors import DataFormatError
    from .models.checkpoint import CheckpointError
    from .nas.genotype import GenotypeError

    try:
        return args.func(args)
    except (CheckpointError, GenotypeError, DataFormatError, FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"pocketnas {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
