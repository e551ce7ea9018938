"""The ``pocketnas`` command: argparse subcommands that call the library (no logic of their own), one module per
command group, each with its ``add_parsers`` and handlers; ``io.py`` declares what each command reads and writes
and ``argtypes.py`` checks every number."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from ..outputs import WRITE_ERRNOS, write_failure
from ..version import __version__
from . import catalogue, compress_cmd, data_cmd, demo_cmd, eval_cmd, nas_cmd, photos_cmd, train_cmd
from .io import check_command_io

logger = logging.getLogger("pocketnas")

GROUPS = (catalogue, data_cmd, nas_cmd, train_cmd, eval_cmd, compress_cmd, photos_cmd, demo_cmd)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pocketnas", description="Compact face recognition networks: search, build, "
                                "train, compress, evaluate.")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="how much the log says (DEBUG also shows the traceback of an error)")
    p.add_argument("--version", action="version", version=f"pocketnas {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(logging, args.log_level)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for handler in logging.getLogger().handlers:  # the console shows --log-level; a run's log.txt keeps INFO
        handler.setLevel(level)
    from ..errors import PocketnasError

    try:
        check_command_io(args)
        return args.func(args)
    except (PocketnasError, OSError) as e:
        if level <= logging.DEBUG or not (isinstance(e, PocketnasError) or e.errno in WRITE_ERRNOS):
            raise  # anything else is a bug: its traceback is what a report needs
        if not isinstance(e, PocketnasError):  # the place refused (full, read-only, ...): not pocketnas's error
            e = write_failure(e.filename or "a file", e)
        command = " ".join(c for c in (args.command, getattr(args, "data_command", None),
                                       getattr(args, "eval_command", None)) if c)
        message = " ".join(line.strip() for line in str(e).splitlines())  # one line, whatever the source wrote
        print(f"pocketnas {command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
