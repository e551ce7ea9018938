"""pocketnas demo: the main job on the bundled ORL faces."""
from __future__ import annotations

import argparse
from .argtypes import positive_int
from .common import RUN_OVERWRITE_HELP
from .io import CommandIO, declare


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    import torch

    torch.set_num_threads(args.threads)
    run_demo(args.out, models=args.models, threads=args.threads, latency=args.latency and not args.no_latency,
             pipeline=not args.no_pipeline, overwrite=args.overwrite)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The subcommands demo."""
    s = sub.add_parser("demo", help="the main job on the bundled ORL faces")
    s.add_argument("--out", default="pocketnas_demo", help="run folder (default pocketnas_demo)")
    s.add_argument("--models", nargs="+", help="registry names (default: the four PocketNets)")
    s.add_argument("--threads", type=positive_int, default=2, help="CPU threads (default 2)")
    s.add_argument("--latency", action="store_true",
                   help="also time each PocketNet's batch-1 and batch-32 forward in PyTorch (about a minute)")
    s.add_argument("--no-latency", action="store_true", help="no latency measurements (the default; kept for old "
                   "scripts)")
    s.add_argument("--no-pipeline", action="store_true", help="only build/verify/cost, no search-train-evaluate")
    s.add_argument("--overwrite", action="store_true", help=RUN_OVERWRITE_HELP)
    declare(s, CommandIO(run_folder="out"), overwrite=False)
    s.set_defaults(func=_cmd_demo)
