"""What each command reads and writes, declared beside its arguments, and checked before the command runs
(issue 39): inputs that must exist, outputs under :mod:`pocketnas.outputs`' rule (never an input, never an existing
file without ``--overwrite``, a place that can be written)."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import MissingFileError
from ..outputs import Output, check_outputs, check_run_folder


@dataclass(frozen=True)
class CommandIO:
    """``inputs``: destinations holding paths the command reads (files, folders, or model specs that may be a
    registry name); ``must_exist``: those of them that must be existing files or folders; ``files``: output
    files; ``folders``: output folders with the names written into them; ``extra``: outputs that depend on other
    arguments (a derived sibling file, a default folder), as a function of the parsed arguments; ``run_folder``:
    the destination of a run folder (existing runs are its own rule; here: never an input, a writable place)."""

    inputs: Tuple[str, ...] = ()
    must_exist: Tuple[str, ...] = ()
    files: Tuple[str, ...] = ()
    folders: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    extra: Optional[Callable[[argparse.Namespace], List[Output]]] = None
    run_folder: str = ""
    labels: Dict[str, str] = field(default_factory=dict)

    def label(self, dest: str) -> str:
        return self.labels.get(dest, "--" + dest.replace("_", "-"))


def declare(parser: argparse.ArgumentParser, io: CommandIO, overwrite: bool = True) -> None:
    """Attach ``io`` to a (sub)command's parser, with ``--overwrite`` when it writes outputs of its own."""
    if overwrite and (io.files or io.folders or io.extra):
        parser.add_argument("--overwrite", action="store_true",
                            help="replace existing output files (an input is never replaced)")
    labels = {}
    for action in parser._actions:  # how the user names each destination, for the messages
        labels[action.dest] = action.option_strings[0] if action.option_strings else action.dest.upper()
    parser.set_defaults(io=CommandIO(io.inputs, io.must_exist, io.files, io.folders, io.extra, io.run_folder,
                                     labels))


def _values(args: argparse.Namespace, dest: str) -> List[str]:
    value = getattr(args, dest, None)
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def check_command_io(args: argparse.Namespace) -> None:
    """Missing inputs and unwritable, clobbering or input-replacing outputs, refused before any work."""
    io: Optional[CommandIO] = getattr(args, "io", None)
    if io is None:
        return
    for dest in io.must_exist:
        for path in _values(args, dest):
            if not os.path.exists(path):
                raise MissingFileError(f"{io.label(dest)} {path}: no such file or folder")
    inputs: Sequence[Tuple[str, str]] = [(io.label(d), p) for d in io.inputs for p in _values(args, d)]
    outputs = [Output(p, io.label(d)) for d in io.files for p in _values(args, d)]
    outputs += [Output(p, io.label(d), names) for d, names in io.folders for p in _values(args, d)]
    if io.extra is not None:
        outputs += io.extra(args)
    check_outputs(outputs, inputs, overwrite=bool(getattr(args, "overwrite", False)))
    for path in _values(args, io.run_folder) if io.run_folder else []:
        check_run_folder(path, io.label(io.run_folder), inputs)
