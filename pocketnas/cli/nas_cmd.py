"""pocketnas search, nas-eval: cell search by any registered method, and honest evaluation of genotypes."""
from __future__ import annotations

import argparse
import os
from ..engine.precision import PRECISIONS
from ..engine.search_methods import SEARCH_METHODS
from ..nas.zero_cost import PROXIES
from .argtypes import fraction, nonnegative_int, positive_int
from .common import PRECISION_HELP, RUN_OVERWRITE_HELP
from .io import CommandIO, declare


def _cmd_search(args: argparse.Namespace) -> int:
    from ..engine.search import search_config
    from ..engine.search_methods import SearchOptions, run_search

    extra = {"data": args.data, "budget_params": args.budget_params, "budget_flops": args.budget_flops,
             "skip_bad": True if args.skip_bad else None, "precision": args.precision}
    cfg = search_config(args.space, args.config, args.set or [], extra)
    options = SearchOptions(resume=args.resume, overwrite=args.overwrite, count=args.count,
                            candidates=args.candidates, proxy=args.proxy, budget_tolerance=args.budget_tolerance)
    outcome = run_search(args.method, cfg, args.out, options)
    if outcome.entries:  # random, zero-cost: the genotypes written, with their cost and scores
        for e in outcome.entries:
            cost = f", {outcome.budget.metric} {e['cost']:,.0f}" if outcome.budget else ""
            scores = ", ".join(f"{k} {v:.4g}" for k, v in e.get("scores", {}).items())
            print(f"{e['name']}{cost}{'; ' + scores if scores else ''}")
        print(f"wrote {len(outcome.entries)} genotypes and {outcome.summary}")
        return 0
    history = outcome.history
    if history.get("interrupted"):
        return 0
    if history.get("stopped_early"):
        print(history["stopped_early"])
    last = history["epochs"][-1]
    print(f"searched {len(history['epochs'])} epochs in {history['minutes']:.1f} min: val acc "
          f"{100 * last['val_acc']:.2f} %, alpha entropy {history['alpha_entropy_start']:.3f} -> "
          f"{history['alpha_entropy_end']:.3f}")
    print(f"genotype: {os.path.join(args.out, 'genotype.json')}, cells: {os.path.join(args.out, 'cells')}")
    return 0


def _cmd_nas_eval(args: argparse.Namespace) -> int:
    from ..evaluation.nas_eval import format_table, load_entries, nas_eval, parse_shard

    shard = parse_shard(args.shard)
    overrides = (args.set or []) + ([f"precision={args.precision}"] if args.precision else [])
    report = nas_eval(load_entries(args.genotypes), args.data, args.bin, args.out, args.seeds, args.config,
                      overrides, flip=args.flip, proxies=[] if args.no_proxies else args.proxies, shard=shard)
    if not report["complete"]:
        print(f"shard {args.shard} finished its runs; {len(report['pending'])} run(s) of other shards are still to "
              f"finish ({', '.join(report['pending'])}): the last shard to finish writes the table")
        return 0
    print(format_table(report))
    print(f"wrote {os.path.join(args.out, 'table.md')}, results.json, accuracy_vs_params.png")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The subcommands search, nas-eval."""
    s = sub.add_parser("search", help="DARTS cell search on face images -> genotype.json, cell PNGs")
    s.add_argument("--space", default="pocketnet", help="search-space YAML (or a built-in name: pocketnet, darts)")
    s.add_argument("--data", help="RecordIO pack (folder or .rec) or image folder")
    s.add_argument("--out", required=True, help="run folder (checkpoint.pt, genotype.json, cells/, tb/, log.txt)")
    s.add_argument("--config", help="optional YAML of search settings: a file, or a packaged name (e.g. "
                                    "search_cpu_celeba295); the space's defaults apply first")
    s.add_argument("--budget-params", help="steer the derived final network towards this many parameters, "
                   "e.g. 1.0M")
    s.add_argument("--budget-flops", help="... or towards this many FLOPs, e.g. 600M")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting (repeatable)")
    s.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    s.add_argument("--skip-bad", action="store_true", help="leave damaged records out (counted in the log) instead "
                   "of refusing the data")
    s.add_argument("--overwrite", action="store_true", help=RUN_OVERWRITE_HELP)
    s.add_argument("--method", choices=SEARCH_METHODS.names(), default="darts",
                   help="darts (default); random: genotypes drawn uniformly in the budget window; zero-cost: the "
                        "best of --candidates random genotypes by a training-free proxy")
    s.add_argument("--count", type=positive_int, default=5, help="(random, zero-cost) genotypes to write")
    s.add_argument("--candidates", type=positive_int, default=100, help="(zero-cost) random genotypes to score")
    s.add_argument("--proxy", default="naswot", choices=PROXIES.names(),
                   help="(zero-cost) the proxy that picks")
    s.add_argument("--budget-tolerance", type=fraction, default=0.05,
                   help="(random, zero-cost) the budget window, a fraction of the target (default 0.05)")
    s.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    declare(s, CommandIO(inputs=("data",), must_exist=("data",), run_folder="out"), overwrite=False)
    s.set_defaults(func=_cmd_search)

    s = sub.add_parser("nas-eval", help="train genotypes under one recipe with several seeds: table, plot, "
                                        "proxy rank correlations")
    s.add_argument("genotypes", nargs="+", help="genotype files, candidates.json of a random/zero-cost search, or "
                                                "published names (pocketnet_casia)")
    s.add_argument("--data", required=True, help="training data: RecordIO pack (folder or .rec) or image folder")
    s.add_argument("--bin", action="append", required=True, help="a .bin set (repeatable; the first is the table's)")
    s.add_argument("--out", required=True, help="study folder: one run per genotype and seed, table.md, "
                   "results.json, accuracy_vs_params.png (resumable: finished runs are kept)")
    s.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1], help="training seeds of every "
                   "genotype (default 0 1)")
    s.add_argument("--config", help="the training recipe every genotype shares (a file or a packaged name)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe value (repeatable)")
    s.add_argument("--flip", action="store_true", help="evaluate with the flip test")
    s.add_argument("--proxies", nargs="+", default=PROXIES.names(), choices=PROXIES.names(),
                   help="zero-cost proxies scored for every genotype (one setting: the recipe's network, 64 faces "
                        "of --data) for the rank correlations")
    s.add_argument("--no-proxies", action="store_true",
                   help="score nothing: correlate the scores stored in candidates.json files only")
    s.add_argument("--shard", default="0/1", metavar="K/N",
                   help="train only the runs whose index is K modulo N, so that N processes (or machines) share "
                        "one study; the last to finish writes the table")
    s.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    declare(s, CommandIO(inputs=("data", "bin"), must_exist=("data", "bin"), run_folder="out"), overwrite=False)
    s.set_defaults(func=_cmd_nas_eval)
