"""The one output rule of every command (issue 39): an output is checked before any work starts and written beside
its final place, moved there only once the command has succeeded.

* **Checked up front** (:func:`check_outputs`): an output that is one of the command's inputs is refused, with or
  without ``--overwrite`` (``data subset P P``, ``release m.pt m.pt``); an existing output is refused unless
  ``--overwrite`` is given; an output whose folder cannot be made or written (a file where a folder should be, a
  read-only place) is refused; all before a file is opened for writing.
* **Written aside, moved into place** (:func:`staged_file`, :func:`staged_folder`): the command writes to a
  temporary name in the same folder; the rename that makes it visible happens only when the block ends without an
  error, so a failed command leaves the earlier output (or nothing) where it was.

Run folders (``train``, ``search``, ``prune``, ``demo``) keep their own rule (:mod:`pocketnas.engine.run_folder`);
this module is for the files and folders that the other commands write. A leaf: it imports nothing of pocketnas but
its errors.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

from .errors import OutputError

# errors of the place written to, not of pocketnas: reported as one line naming the path
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO, errno.ENOTDIR,
                errno.EISDIR, errno.ENAMETOOLONG, errno.ENOENT}


@dataclass(frozen=True)
class Output:
    """One output of a command: a file (``names`` empty), or a folder into which the command writes ``names``.
    ``option`` is how the user named it (``--out``, ``--json``, ``OUT``), for the messages."""

    path: str
    option: str
    names: Tuple[str, ...] = ()

    @property
    def is_folder(self) -> bool:
        return bool(self.names)

    def targets(self) -> List[str]:
        return [os.path.join(self.path, n) for n in self.names] if self.names else [self.path]


def _same(a: str, b: str) -> bool:
    """Whether two paths name one file or folder (after symlinks; hard links too when both exist)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:  # pragma: no cover - a race with a removal
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_writable(output: Output) -> None:
    """Refuse an output whose place cannot be made or written (a file where a folder should be, a read-only
    folder), naming the option and the path."""
    folder = output.path if output.is_folder else os.path.dirname(os.path.abspath(output.path))
    if output.is_folder and os.path.exists(output.path) and not os.path.isdir(output.path):
        raise OutputError(f"{output.option} {output.path}: is a file, not a folder")
    if not output.is_folder and os.path.isdir(output.path):
        raise OutputError(f"{output.option} {output.path}: is a folder; name the file to write")
    base = _nearest_existing(folder)
    if not os.path.isdir(base):
        raise OutputError(f"{output.option} {output.path}: cannot be written: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{output.option} {output.path}: cannot be written: {base} is not writable")


def check_run_folder(path: str, option: str, inputs: Sequence[Tuple[str, str]]) -> None:
    """A run folder (its own rule for existing runs: :mod:`pocketnas.engine.run_folder`) must not be one of the
    command's inputs and must be a place that can be written."""
    for opt, source in inputs:
        if source and os.path.lexists(source) and _same(path, source):
            raise OutputError(f"{option} {path}: is also this command's input ({opt} {source}); write the run "
                              f"elsewhere")
    check_writable(Output(path, option, ("",)))


def check_outputs(outputs: Iterable[Output], inputs: Sequence[Tuple[str, str]], overwrite: bool = False) -> None:
    """Refuse, before any work, an output that is an input (``inputs``: (option, path) pairs; always), that
    exists (unless ``overwrite``) or that cannot be written. Raises :class:`OutputError` naming the path and the
    option; returns quietly otherwise."""
    outputs = [o for o in outputs if o.path]
    for o in outputs:
        for target in o.targets() + ([o.path] if o.is_folder else []):
            for option, source in inputs:
                if source and os.path.lexists(source) and _same(target, source):
                    raise OutputError(f"{o.option} {target}: is also this command's input ({option} {source}); "
                                      f"write the output elsewhere (an input is never replaced, not even with "
                                      f"--overwrite)")
    seen: List[str] = []
    for o in outputs:
        for target in o.targets():
            if any(_same(target, s) for s in seen):
                raise OutputError(f"{o.option} {target}: named as two outputs of one command")
            seen.append(target)
    for o in outputs:
        check_writable(o)
        if not overwrite:
            existing = [t for t in o.targets() if os.path.lexists(t)]
            if existing and o.is_folder:
                raise OutputError(f"{o.option} {o.path}: holds {', '.join(os.path.basename(t) for t in existing)} "
                                  f"already; add --overwrite to replace {'them' if len(existing) > 1 else 'it'}, or "
                                  f"choose another folder")
            if existing:
                raise OutputError(f"{o.option} {o.path}: exists; add --overwrite to replace it, or choose another "
                                  f"path")


def write_failure(path: str, e: OSError) -> OutputError:
    """The one-line error for a write that the place refused (full, read-only, ...)."""
    return OutputError(f"{path}: cannot be written: {e.strerror or e}")


@contextmanager
def staged_file(path: str) -> Iterator[str]:
    """A temporary path beside ``path`` (same extension, so writers that look at it behave) for the block to write;
    moved onto ``path`` when the block ends without an error, removed otherwise. The folder is created."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
        os.close(fd)
    except OSError as e:
        raise write_failure(path, e) from None
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if e.errno in WRITE_ERRNOS:
            raise write_failure(path, e) from None
        raise
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def staged_folder(path: str) -> Iterator[str]:
    """A temporary folder beside ``path`` for the block to fill; when the block ends without an error, each entry
    is moved into ``path`` (created if needed), replacing an entry of the same name; removed otherwise."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(os.path.abspath(path))}-", dir=parent)
    except OSError as e:
        raise write_failure(path, e) from None
    try:
        yield tmp
        os.makedirs(path, exist_ok=True)
        for name in sorted(os.listdir(tmp)):
            dst = os.path.join(path, name)
            if os.path.isdir(dst) and not os.path.islink(dst):
                shutil.rmtree(dst)
            os.replace(os.path.join(tmp, name), dst)
        os.rmdir(tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in WRITE_ERRNOS:
            raise write_failure(path, e) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove(path: Optional[str]) -> None:
    if path and os.path.lexists(path):
        os.unlink(path)
